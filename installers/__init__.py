"""Start at login: the service definitions per OS and the code that installs and removes them.

Each OS module turns a `Context` (which command to run, which settings directory) into a `Plan`
(files, registry values, commands); `service.py` applies a plan, records what it wrote, and
undoes exactly that.
"""
