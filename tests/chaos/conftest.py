from tests.integration.conftest import coordinator, ray_session  # noqa: F401  (shared fixtures)
