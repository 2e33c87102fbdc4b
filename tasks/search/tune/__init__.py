"""The model-based search: an Optuna study as a proposer of the one loop
(:mod:`tasks.search.loop`), split by concern. The design notes and their measurements are in
``docs/tune.md``.

- :mod:`.objectives`: what a tune can optimize (``--objectives``);
- :mod:`.samplers`: Optuna's samplers, seeded apart per resume point and per tune;
- :mod:`.heartbeats`: the thread that keeps a live tune's trials fresh;
- :mod:`.study`: opening a study and refusing one of another space, data or objectives;
- :mod:`.recovery`: a dead tune's running trials failed and asked again;
- :mod:`.warm_start`: the cache's trials of the study's space added to it;
- :mod:`.proposer`: :class:`~.proposer.TuneProposer`, the ask and the tell.
"""
