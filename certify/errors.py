"""The one exception family for user mistakes: the CLI prints its message on one line and exits 2."""


class CertifyError(Exception):
    """A user-facing error (bad path, bad shape, unsupported op, malformed file, bad argument).

    The message must name the problem: the file, the op, the shape or the argument.
    """
