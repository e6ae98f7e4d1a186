"""The job spec: the one pydantic model that the API validates with, the database stores and the worker runs.

This package imports pydantic only, so the service can validate and dry-run a spec without importing torch. Shape
inference, parameter counts and the memory estimate are plain arithmetic on the spec. Its modules, in the order they
import each other: base (the base model, errors, shapes), data, layers, model (the graph of layers), objectives
(losses, optimizers, schedules, regularization, augmentation), training, job (the whole spec), planner (the dry run),
parse (a document to a JobSpec, with every error at its path).

Adding a layer, loss or optimizer is one spec class (with its shape arithmetic, for layers) and one builder
registered under the same name in the torch side (`layers.py`, `losses.py`, `optimizers.py`); a test asserts the two
sets of names are equal. A team adds layers without forking, in a package of its own that declares them under the
entry-point group `trainq.layers` (`trainq.extensions` is all it imports from trainq).
"""

from __future__ import annotations

from trainq.models.spec.base import (FieldError, Shape, ShapeError, Spec, SpecError)  # noqa: F401
from trainq.models.spec.data import (COLUMN_NAME, DATASET_NAMES, GENERATORS, LOGIC_GATES, MODEL_NAME, SHAPE_CLASSES,
                                     SKLEARN_SETS, UPLOAD_NAME, UPLOAD_REF, ColumnSpec, DatasetInfo, DatasetSpec,
                                     FillValue, Missing, MissingSpec, PreprocessSpec, Uploaded, class_names_of,
                                     image_target, planned_codec, split_ref, table_rules, table_target, target_of,
                                     upload_info)  # noqa: F401
from trainq.models.spec.layers import (ACTIVATIONS, BAYES_LAYERS, BUILTIN_LAYERS, BUILTIN_NAMES, COMMON_FIELDS, HINTS,
                                       INIT_NAMES, KINDS, LAYER_CLASSES, MERGES, PLUGINS, REFUSED_PLUGINS,
                                       SEQUENCE_LAYERS, ActivationSpec, AddSpec,
                                       AttentionSpec, BatchnormSpec, BayesFields, ConcatSpec, Conv2dBayesSpec,
                                       Conv2dSpec, DenseBayesSpec, DenseSpec, DepthwiseConv2dSpec, DropoutSpec,
                                       EmbeddingSpec, FlattenSpec, GlobalAvgPoolSpec, GruSpec, HeInit, InitSpec,
                                       LayerSpec, LayernormSpec, LecunInit, LstmSpec, MdnSpec, NoiseSpec, NormalInit,
                                       PadSpec, Padding, PoolSpec, PositionalSpec, RecurrentFields, SameShape,
                                       SeparableConv2dSpec, SequencePoolSpec, TransformerEncoderSpec, UniformInit,
                                       Windowed, XavierInit, ZerosInit, installed_packages, layer_catalog, plugin_of,
                                       projection_of, projection_params)  # noqa: F401
from trainq.models.spec.model import (BLOCK_NAME, ITEM, LAYER_ALIASES, LAYER_TAGS, MAX_DEPTH, MAX_NODES, PARAMETER,
                                      Graph, LayerItem, ModelSpec, Node, UseSpec, unknown_layer)  # noqa: F401
from trainq.models.spec.objectives import (AdagradSpec, AdamSpec, AdamwSpec, AffineAug, AugmentationSpec, BceLossSpec,
                                           Beta, ClassWeights, CosineScheduleSpec, CropAug, CrossEntropyLossSpec,
                                           ExponentialScheduleSpec, GaussianNllLossSpec, GaussianNoiseAug, HflipAug,
                                           HingeLossSpec, HuberLossSpec, InvertAug, LbfgsSpec, LossSpec, Lr,
                                           MaeLossSpec, MdnNllLossSpec, MomentumSpec, MseLossSpec, NesterovSpec,
                                           NllLossSpec, NoScheduleSpec, OneCycleScheduleSpec, OptimizerSpec,
                                           PcaColorAug, PerceptronLossSpec, PlateauScheduleSpec, Prob,
                                           RegularizationSpec, RmspropSpec, ScheduleSpec, SgdSpec, StepScheduleSpec,
                                           TtaSpec, VflipAug, WarmupScheduleSpec)  # noqa: F401
from trainq.models.spec.training import (POOL_PATTERN, EarlyStoppingSpec, InferenceSpec, ResourcesSpec, TrainingSpec,
                                         improves)  # noqa: F401
from trainq.models.spec.job import (AUGMENTATION_TYPES, INIT_TYPES, LAYER_TYPES, LOSS_TYPES, OPTIMIZER_TYPES,
                                    SCHEDULE_TYPES, PROJECT_NAME, TAG_KEY, JobSpec, Tags, names_of, pinned,
                                    spec_rows, tag_text)  # noqa: F401
from trainq.models.spec.planner import (BAYES_CLASSIFICATION_METRICS, BAYES_REGRESSION_METRICS,
                                        CLASSIFICATION_METRICS, REGRESSION_METRICS, STACKED_LAYERS, STACKED_SCHEDULES,
                                        LayerPlan, Plan, batch_size, ensemble_members, input_shape, layer_packages,
                                        plan, stacking_limit, train_rows)  # noqa: F401
from trainq.models.spec.parse import (ALIASES, MISSING_HINTS, PLACEHOLDERS, SHAPING, errors_from, fields_at,
                                      format_path, message_of, parse_spec, unknown_field)  # noqa: F401
