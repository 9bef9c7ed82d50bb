"""Runs: what a config turns into.

- :mod:`nas.runs.config` (with :mod:`nas.runs.config_compose`: ``extends:`` and ``smoke:``): the
  config file, checked field by field;
- :mod:`nas.runs.pipeline` and :mod:`nas.runs.stages`: ``nas run``'s stages (search, retrain,
  distill, export, report), each resumable;
- :mod:`nas.runs.workdir`: work folders claimed by one config;
- :mod:`nas.runs.report`: the run's report and plots.
"""
