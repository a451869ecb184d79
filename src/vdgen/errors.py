"""The one exception family user mistakes raise; the CLI turns it into one line and exit code 1."""


class VdgenError(Exception):
    """A user-facing error with a one-line message."""


class ConfigError(VdgenError):
    """An invalid or unknown configuration value."""


class CheckpointError(VdgenError):
    """A checkpoint that cannot be loaded: not safetensors, malformed, or mismatched."""


class VideoInputError(VdgenError):
    """A video or image that cannot be read."""


class OutputError(VdgenError):
    """An output that cannot be written (exists, unwritable folder, full disk)."""


class TrainingError(VdgenError):
    """Training cannot continue (non-finite loss, bad run folder)."""
