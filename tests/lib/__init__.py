"""The shared test harness: real processes and real repositories for the tests and the benches.

Each module is plain Python (no pytest fixtures), so ``bench/`` imports it as well as ``tests/``:

- :mod:`tests.lib.tools`: a required tool (skipped or failed under pytest, an exit elsewhere), free ports,
  stopping a process group;
- :mod:`tests.lib.git`: git with a fixed identity and dates, small repositories;
- :mod:`tests.lib.recipes`: recipe files written as a user writes them;
- :mod:`tests.lib.cli`: ``mangos-farm`` run as a user runs it, a farm in a directory;
- :mod:`tests.lib.keys`: the key set-up of a fleet's homes;
- :mod:`tests.lib.redis_server`: redis-server on a free port;
- :mod:`tests.lib.moto`: a moto S3 server on a free port;
- :mod:`tests.lib.fleet`: redis, a store, a coordinator and workers, each process with its own home.
- :mod:`tests.lib.rootless`: a non-root user with subordinate ids, commands run as it, a delegated cgroup.
"""
