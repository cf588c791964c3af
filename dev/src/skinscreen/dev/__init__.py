"""skinscreen's development tooling: embedded servers, `make run`'s stack, `make bench`.

Installed by `make run`, `make test` and `make bench`; no service image installs it.
"""
