"""Benchmarks, profiles and result suites of MultiCheXNet (not part of the ``monai_mcx`` package).

Run each one from the repository root as a module, e.g. ``python -m experiments.benchmark --quick`` or
``python -m experiments.run_experiments --suite lesions``; they use ``monai_mcx``'s public API only (models are
read with :func:`monai_mcx.model.load_model`, predictions post-processed by
:class:`monai_mcx.inferers.MultiCheXNetPostprocessor`). What several of them share is in :mod:`experiments.common`
(paths, subsampling, bundle training runs, latency) and :mod:`experiments.bench_sections` (the sections of
``docs/benchmarks.md`` / ``docs/benchmarks.json``).
"""
