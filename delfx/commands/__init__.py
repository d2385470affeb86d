"""The `delfx` commands, one module per stage; `delfx.cli` gathers them into the group.

Each command parses its options, calls one core function of the library and formats what it
returns (data on stdout, logs on stderr). Nothing here is imported by the library.
"""
