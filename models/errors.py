"""One family of exceptions for the ML core; the service maps them to HTTP errors."""


class GradliftError(Exception):
    """Base class of every error the ML core raises on purpose."""


class NotFoundError(GradliftError):
    """A pair, task or Gradient Transformer that does not exist."""


class ConfigError(GradliftError):
    """A configuration whose values do not fit together."""


class AdapterError(GradliftError):
    """An uploaded adapter file that cannot be used (wrong names, shapes, dtypes, layout or values)."""


class VerificationError(GradliftError):
    """A generated update that failed the checks run before it is stored."""


class DataFileError(GradliftError):
    """A training data file that cannot be read; `problems` holds (line number, what is wrong)."""

    def __init__(self, message: str, problems: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
