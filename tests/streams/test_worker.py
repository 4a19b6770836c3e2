from postwarden.config import Settings
from streams.worker import FAUST_LOGLEVELS


def test_every_allowed_log_level_has_a_faust_name():
    pattern = Settings.model_fields["log_level"].metadata
    allowed = {"DEBUG", "INFO", "WARNING", "ERROR"}
    assert any(getattr(m, "pattern", None) == "^(DEBUG|INFO|WARNING|ERROR)$" for m in pattern)
    assert set(FAUST_LOGLEVELS) == allowed
    assert set(FAUST_LOGLEVELS.values()) <= {"crit", "error", "warn", "info", "debug"}
