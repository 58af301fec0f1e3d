import pytest

from workflow.errors import ConfigError
from workflow.execution.executors import make_executor

from hostile import square


def _failure(payload, kind, message):
    return f"{kind}:{payload}"


@pytest.mark.parametrize("name", ["local", "thread", "process"])
def test_executors_give_the_same_results(name):
    jobs = list(enumerate([3, 1, 4, 1, 5, 9, 2, 6]))
    with make_executor(name, square, 2, 30, _failure) as ex:
        got = dict(ex.imap_unordered(iter(jobs)))
    assert got == {i: x * x for i, x in jobs}


def test_a_hung_or_crashing_job_loses_only_itself():
    payloads = [2, "hang", 3, "crash", 4, 5, "crash", 6]
    with make_executor("process", square, 2, 2.0, _failure) as ex:
        got = dict(ex.imap_unordered(enumerate(payloads)))
        assert ex.restarts == 3
    assert got == {0: 4, 1: "timeout:hang", 2: 9, 3: "crashed:crash", 4: 16, 5: 25,
                   6: "crashed:crash", 7: 36}


def test_unknown_executor_is_refused():
    with pytest.raises(ConfigError, match="unknown executor 'ray'"):
        make_executor("ray", square, 1, 1, _failure)


def test_workers_that_always_die_stop_the_run_instead_of_failing_every_item():
    from workflow.execution.pool import PoolBroken

    from hostile import always_crash
    with pytest.raises(PoolBroken, match="in a row died"):
        with make_executor("process", always_crash, 2, 30, _failure) as ex:
            list(ex.imap_unordered(enumerate(range(100))))


def _item_failure(chunk, kind, message):
    (x,) = chunk
    return [f"{kind}:{x}"]


def test_chunks_with_a_bad_item_are_split_and_only_it_is_lost():
    from hostile import squares
    chunks = [[1, 2, 3], [4, "hang", 5, 6], [7], ["crash", 8], [9, 10]]
    with make_executor("process", squares, 2, 1.0, _item_failure, split=True) as ex:
        got = dict(ex.imap_unordered(enumerate(chunks)))
    assert got == {0: [1, 4, 9], 1: [16, "timeout:hang", 25, 36], 2: [49],
                   3: ["crashed:crash", 64], 4: [81, 100]}


def test_a_paused_job_iterator_is_asked_again_while_results_still_come_in():
    """A consumer that frees room only on receiving results: with PAUSE the pool keeps
    collecting instead of stalling (blocking in the iterator would deadlock)."""
    from workflow.execution.pool import PAUSE
    room = [2]  # jobs that may be out before a result is taken
    got = {}

    def jobs():
        for i in range(12):
            while room[0] == 0:
                yield PAUSE
            room[0] -= 1
            yield i, i
    with make_executor("process", square, 3, 30, _failure) as ex:
        for i, r in ex.imap_unordered(jobs()):
            got[i] = r
            room[0] += 1
    assert got == {i: i * i for i in range(12)}


def test_a_pause_with_nothing_out_polls_until_the_iterator_goes_on():
    import threading

    from workflow.execution.pool import PAUSE
    go = threading.Event()
    threading.Timer(0.2, go.set).start()

    def jobs():
        while not go.is_set():
            yield PAUSE
        yield 0, 7
    with make_executor("process", square, 2, 30, _failure) as ex:
        assert dict(ex.imap_unordered(jobs())) == {0: 49}
