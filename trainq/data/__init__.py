"""The data a team brings, read without torch: formats (CSV, TSV, Parquet, JSON Lines, NPZ, archives of images),
profiles of what a file holds, and the preprocessing fitted on a training split (vocabularies, fills, scales) that
travels inside a model. The service uses it at upload and prediction, the worker when it prepares a run's data, the
export when it writes the preprocessing into the ONNX graph.

Nothing here unpickles: tables are read with pyarrow, images with Pillow, arrays with numpy (allow_pickle=False).
"""
