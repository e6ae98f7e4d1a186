"""The Flask app factory: settings, database, broker producer, blueprints, JSON errors. Only this module imports the
blueprints; what they share per request lives in `context`."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, render_template, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from trainq.service.api import bp as api_bp
from trainq.service.auth import RateLimiter, TokenCache
from trainq.service.context import Services
from trainq.service.objects import open_store
from trainq.service.dashboard import bp as dashboard_bp
from trainq.service.dashboard import missing_assets, wants_page
from trainq.service.datasets_api import bp as datasets_bp
from trainq.service.db import heartbeat_engine, make_engine, make_sessionmaker
from trainq.service.http import fail
from trainq.service.inference import Sessions
from trainq.service.models_api import bp as models_bp
from trainq.service.monitoring import bp as monitoring_bp
from trainq.service.monitoring import instrument
from trainq.service.oip import bp as oip_bp
from trainq.service.sweeps_api import bp as sweeps_bp
from trainq.service.worker_api import bp as worker_bp
from trainq.settings import Settings

log = logging.getLogger(__name__)


class HexIdConverter(BaseConverter):
    """Ids are 32 lowercase hex digits; anything else never reaches a handler (and never a path)."""

    regex = "[0-9a-f]{32}"


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except that a request without the cookie (an API client with a bearer token)
    gets an empty session without building the cookie's signer, which cost a tenth of a job read."""

    def open_session(self, app, request):
        if self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)


def secret_key(settings: Settings) -> str:
    """The cookie-signing key: from the settings, or generated once into the data folder."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "secret_key"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, SECRET_KEY=secret_key(settings),
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=settings.cookie_secure, SESSION_COOKIE_NAME="trainq_session")
    app.url_map.converters["hexid"] = HexIdConverter
    instrument(app)  # first: every request is timed, those refused by a later check too
    app.session_interface = CookieSessions()
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    reads = make_engine(settings.resolved_database_url, autocommit=True)
    app.extensions["trainq"] = Services(settings, make_sessionmaker(engine), settings.storage_dir.resolve(),
                                        RateLimiter(), make_sessionmaker(reads), reads, TokenCache(),
                                        Sessions(settings.model_cache, settings.predict_threads),
                                        open_store(settings.storage_url, settings.s3_endpoint_url,
                                                   settings.storage_dir.resolve()),
                                        heartbeat_engine(settings.resolved_database_url))

    @app.before_request
    def _no_nul_in_the_url():
        # NUL cannot be stored in PostgreSQL text and is never meaningful in a path or query: refuse it once, here.
        if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
            fail(400, "bad_request", "the URL must not contain NUL characters")

    @app.teardown_appcontext
    def _close(exc):
        reads = g.pop("reads", None)
        if reads is not None:
            reads.close()
        session = g.pop("db", None)
        if session is not None:
            if exc is not None:
                session.rollback()
            session.close()

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        body = getattr(exc, "body", None) or {"error": exc.name.lower().replace(" ", "_"), "message": exc.description}
        if wants_page():  # a person at the dashboard: a page with a way back, not the API's JSON
            return render_template("error.html", code=exc.code, name=exc.name, message=body["message"]), exc.code
        response = jsonify(body)
        response.status_code = exc.code or 500
        for key, value in (getattr(exc, "extra_headers", None) or {}).items():
            response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return jsonify({"error": "internal", "message": "an unexpected error; see the service log"}), 500

    app.register_blueprint(api_bp)
    app.register_blueprint(worker_bp)
    app.register_blueprint(datasets_bp)
    app.register_blueprint(sweeps_bp)
    app.register_blueprint(models_bp)
    app.register_blueprint(oip_bp)
    app.register_blueprint(monitoring_bp)
    app.register_blueprint(dashboard_bp)
    for path in missing_assets():
        log.error("the dashboard's chart library is missing (%s): every chart will be blank. Install trainq again "
                  "where npm can reach its registry, or run `npm ci` in trainq/service/assets", path)
    return app
