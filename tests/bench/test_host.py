from bench.host import python_loop_ms


def test_the_host_speed_figure_grows_with_the_work() -> None:
    small = python_loop_ms(iterations=20_000, repeats=2)
    large = python_loop_ms(iterations=2_000_000, repeats=2)
    assert 0 < small < large
