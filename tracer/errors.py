"""Typed errors. The library raises these; the CLI turns each into one line on
stderr and its exit code. Nothing else in the library calls sys.exit."""


class TracerError(Exception):
    """Base class: a failure the user can act on, reported in one line."""

    exit_code = 1


class UsageError(TracerError):
    """Bad input from the user: unknown service, malformed filter, bad option."""

    exit_code = 2


class PrivilegeError(TracerError):
    """The operation needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)."""

    exit_code = 3


class EnvironmentProblem(TracerError):
    """The machine lacks something: a system package, a kernel feature, headers."""

    exit_code = 4


class MissingPackageError(EnvironmentProblem):
    def __init__(self, program: str, package: str):
        super().__init__(
            f"'{program}' not found: install the Debian package {package} "
            f"(or run scripts/setup.sh)"
        )
        self.program = program
        self.package = package


class KernelFeatureError(EnvironmentProblem):
    """The running kernel cannot do what was asked (e.g. a forced backend)."""


class CaptureFileError(TracerError):
    """A capture file cannot be written or read (unwritable, truncated, not a capture)."""

    exit_code = 5


class ManifestError(UsageError):
    """A Kubernetes manifest the lab cannot render; says what and where."""


class LabError(TracerError):
    """The lab could not be built, or is not up when it must be."""


class LegacyXtablesError(EnvironmentProblem):
    """The rules to trace are in legacy xtables, which nf_tables tracing cannot see."""
