"""The core: stages and pipelines (the definition), and the one scheduler that runs them.

Standard library only; it imports nothing above it but the executor contract
(:mod:`conveyor.executors.base`). Users import these names from :mod:`conveyor`.

    stage.py       Stage, @stage: a function plus its policy, validated when made
    policy.py      Retry: attempts, backoff, jitter, which errors
    pipeline.py    Pipeline: a validated DAG of stages; run() and stream()
    flow.py        a stage while it runs: bounded queue, reservations, slots, counters
    ledger.py      what became of every source item: root counts, terminal states, order
    scheduler.py   the passes: complete, route, dispatch, read; failures; stall check
    run.py         Run: the iterator the user holds; state machine and cancellation
    events.py      Instrument hooks, isolated so that an observer never kills a run
    statistics.py  frozen snapshots of a run's counters
"""
