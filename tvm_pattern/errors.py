"""Exceptions with messages that name what was wrong."""


class TvmPatternError(ValueError):
    """Base class: bad input to tvm-pattern."""


class PatternError(TvmPatternError):
    """A pattern, pattern library or mask that does not fit the rules."""


class ModelError(TvmPatternError):
    """A model that cannot be pruned or compiled as asked."""


class DatasetNotFoundError(TvmPatternError, FileNotFoundError):
    """The dataset files are not where we looked."""


class RPCError(TvmPatternError):
    """A remote device (RPC tracker or server, the emulated phone) that cannot be set up, started or reached."""


class SpecError(TvmPatternError):
    """A ``MODULE:CALLABLE`` spec (the user's model or data) that cannot be imported, called or used."""


class CheckpointError(TvmPatternError):
    """A checkpoint that cannot be resumed: made with other settings, or unreadable."""
