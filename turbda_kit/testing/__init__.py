"""Test fixtures and assertions for code built on turbda_kit, like ``xarray.testing``.

Builders make small, seeded, realistic-layout inputs; assertions compare results with
messages that say where they differ.

Builders (:mod:`turbda_kit.testing.builders`)
    :func:`synthetic_nature_run`   a random-walk ``theta (time, z, y, x)`` with the SQG
                                   nature-run layout and CF attributes (not SQG physics)
    :func:`synthetic_shard_root`   a shard root, made by the kit's preprocessing or laid
                                   out like the seed's published ClimaX set
    :func:`small_ensemble`         a seeded ``(member, *state_shape)`` ensemble tensor

Assertions (:mod:`turbda_kit.testing.assertions`)
    :func:`assert_datasets_identical`    same variables, dims, dtypes, bits and attributes
    :func:`assert_ensembles_close`       member by member within a tolerance
    :func:`assert_cf_complete`           units / long_name everywhere, decodable time
    :func:`assert_shard_roots_identical` two shard roots equal array by array, file by file

Example
-------
>>> from turbda_kit.testing import assert_cf_complete, synthetic_nature_run
>>> ds = synthetic_nature_run(n_days=2, steps_per_day=2, grid=4, seed=0)
>>> ds.theta.dims
('time', 'z', 'y', 'x')
>>> assert_cf_complete(ds)
"""

from .assertions import (
    assert_cf_complete,
    assert_datasets_identical,
    assert_ensembles_close,
    assert_shard_roots_identical,
)
from .builders import small_ensemble, synthetic_nature_run, synthetic_shard_root

__all__ = ["assert_cf_complete", "assert_datasets_identical", "assert_ensembles_close",
           "assert_shard_roots_identical", "small_ensemble", "synthetic_nature_run",
           "synthetic_shard_root"]
