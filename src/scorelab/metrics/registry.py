"""The one registry of metrics: name -> class (``METRICS``), and the two kinds of metric.

A metric is one class, registered by name; its options and their defaults are the keyword
arguments of its constructor as ``conf/metrics/<name>.yaml`` gives them (that file is the
only place they are set; its ``_target_`` names the class). The training callback
(``metrics.callbacks.Metrics``), evaluate.py and the benchmarks build and run the same
objects:

* ``SampleMetric``: computed from the features of generated samples (and of the real data:
  the ``reference``). Every sample metric of an evaluation shares one pass: the samples are
  drawn once and featurised once per distinct extractor (``SampleEvaluation``).
* ``HeldoutMetric``: computed from held-out examples (bits/dim through the PF-ODE), with its
  own pass.

Adding a metric touches its module (a class with ``@register_metric("name")``) and its
config, nothing else. Values are plain floats (lists for per-class values) keyed by name;
they land in metrics.json, the logger (``metrics/<key>``) and the sweep summary alike.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from torch import Tensor

METRICS: dict[str, type] = {}


def register_metric(name: str):
    def wrap(cls):
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        cls.name = name
        METRICS[name] = cls
        return cls
    return wrap


def get_metric(name: str) -> type:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"metrics: unknown metric {name!r}; known: "
                         f"{', '.join(sorted(METRICS))}") from None


def build_metric(name: str, options: Any = None):
    """A metric from its name and options (a dict, possibly with ``_target_``, which must
    name the registered class), or an already built metric."""
    if isinstance(options, Metric):
        return options
    options = {k: v for k, v in dict(options or {}).items() if k != "_target_"}
    try:
        return get_metric(name)(**options)
    except TypeError as e:
        raise ValueError(f"metrics.{name}: {e}") from None


class Metric:
    """Base of every metric. ``skip_reason(data)`` says why the metric does not apply to
    a data module (e.g. energy distance without an exact law), None when it does."""

    name: ClassVar[str] = ""

    def skip_reason(self, data) -> str | None:
        return None


class SampleMetric(Metric, abc.ABC):
    """A statistic of sample features against the real data's.

    Class attributes say what it needs: ``needs_logits`` (the extractor's class logits),
    ``needs_real_features`` (the real features themselves, not only their mean and
    covariance), ``needs_labels`` (samples generated for given classes), ``needs_digits``
    (samples generated for captions naming a left and a right digit).

    Args:
        features: the extractor spec (``metrics.features``); "auto" picks by data.
        cache_dir: where computed reference statistics are cached (null: data.root or
            ~/.cache/scorelab); shared by the metrics on one extractor.
    """

    needs_logits: ClassVar[bool] = False
    needs_real_features: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    needs_digits: ClassVar[bool] = False

    def __init__(self, features="auto", cache_dir=None):
        self.features, self.cache_dir = features, cache_dir

    def feature_options(self) -> dict:
        """Options added to the extractor spec (e.g. FID's ``inception_weights``)."""
        return {}

    def extractor_spec(self) -> dict:
        """``features`` (a name or {name, **options}) as a dict, with ``feature_options``."""
        spec = {"name": self.features} if isinstance(self.features, str) else \
            dict(self.features or {})
        return {**spec, **self.feature_options()}

    def reference(self, data, extractor, cache) -> tuple[dict | None, str | None]:
        """The real data's side, from ``cache(keep_features)`` (the dataset's reference on
        this metric's extractor) by default. Returns (reference, where it came from)."""
        return cache(self.needs_real_features)

    @abc.abstractmethod
    def compute(self, fake: dict[str, Tensor], real: dict | None) -> dict:
        """``fake``: {"features", "logits"[, "labels", "digits"]} of every sample, in index
        order."""


class HeldoutMetric(Metric):
    """A statistic of held-out examples, with its own pass: ``run(module, data, seed, rank,
    world, gather, progress) -> (values, done, wanted, settings)``; ``key`` names its value
    (and ``<key>_settings``), ``chunk`` is its batch."""

    def items(self, data) -> tuple[int, str]:
        """How many items its pass covers and what they are (the progress bar's): the
        first ``num_examples`` held-out examples."""
        return min(self.num_examples, len(data.val_set)), "examples"
