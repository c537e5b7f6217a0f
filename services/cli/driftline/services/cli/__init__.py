"""The ``driftline`` command line: subcommands are contributed by packages via entry points."""
