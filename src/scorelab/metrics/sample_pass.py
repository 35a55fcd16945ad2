"""One pass of samples for every sample metric of an evaluation.

``SampleEvaluation`` takes the requested sample metrics and the data module, builds each
distinct feature extractor once, loads (or computes and caches) each reference once, and
turns the gathered features of one pass of samples (``evaluation.sample_features`` with
``extractors``) into every metric's values. So FID, KID and PRDC on the same extractor
cost one draw of the samples and one featurisation; a metric on another extractor adds a
featurisation of the same samples, not another draw.
"""

from __future__ import annotations

import json
import logging

from scorelab.metrics.evaluation import reference_statistics
from scorelab.metrics.features import build_extractor, feature_spec
from scorelab.metrics.registry import SampleMetric

log = logging.getLogger(__name__)

# rows of a sample pass that say what each sample was drawn for (``sample_features``)
CONDITION_ROWS = ("labels", "digits")


class SampleEvaluation:
    """Args:
        metrics: name -> SampleMetric.
        data: the run's DataModule (name, is_image, shape, load(), root; mixture).
        implicit: names of metrics added by default rather than asked for: skipped quietly
            where they do not apply.

    Attributes: ``metrics`` (those that apply), ``skipped`` (name -> reason),
    ``extractors`` (key -> extractor, for ``sample_features``). Metrics that need labels
    are skipped at ``compute`` when the samples have none (an unconditional model).
    Extractors run on the CPU (samples are moved there).
    """

    def __init__(self, metrics: dict[str, SampleMetric], data, implicit=()):
        self.data, self.metrics, self.skipped, self.implicit = data, {}, {}, set(implicit)
        self.extractors, self._key_of, self._specs = {}, {}, {}
        self._references: dict = {}
        self._cache_dirs: dict = {}       # extractor key -> the first cache_dir given
        for name, metric in metrics.items():
            reason = metric.skip_reason(data)
            if reason is None:
                key = self._extractor_for(metric)
                if metric.needs_logits and self.extractors[key].num_logits == 0:
                    reason = f"features {self.extractors[key].name} give no class logits"
            if reason is not None:
                self._skip(name, reason)
                continue
            self.metrics[name] = metric
            self._key_of[name] = key
        used = set(self._key_of.values())
        self.extractors = {k: e for k, e in self.extractors.items() if k in used}

    def _skip(self, name: str, reason: str) -> None:
        if name not in self.implicit:
            self.skipped[name] = reason
            log.info("metrics.%s skipped: %s", name, reason)

    def _extractor_for(self, metric: SampleMetric) -> str:
        spec = feature_spec(metric.extractor_spec(), self.data.name, self.data.is_image)
        ident = json.dumps(spec, sort_keys=True, default=str)
        for key, known in self._specs.items():
            if known == ident:
                break
        else:
            key = spec["name"] if spec["name"] not in self.extractors else \
                f"{spec['name']}{len(self.extractors)}"
            self._specs[key] = ident
            self.extractors[key] = build_extractor(spec, "cpu", getattr(self.data, "shape",
                                                                          None))
        if getattr(metric, "cache_dir", None):
            self._cache_dirs.setdefault(key, metric.cache_dir)
        return key

    def _cache(self, key: str):
        """``cache(keep_features, reference_file=None)`` for the extractor ``key``. The
        dataset is featurised at most once per extractor: if any metric on it needs the real
        features (KID, PRDC), the first computation keeps them for all."""
        anyone = any(getattr(m, "needs_real_features", False)
                     for name, m in self.metrics.items() if self._key_of[name] == key)

        def cache(keep_features: bool, reference_file=None):
            if reference_file is None:
                keep_features = keep_features or anyone
            have = self._references.get((key, True, reference_file))
            if have is None:
                have = self._references.get((key, keep_features, reference_file))
            if have is None:
                have = reference_statistics(
                    self.data.load(), getattr(self.data, "reference_name", self.data.name),
                    self.extractors[key], reference_file,
                    self._cache_dirs.get(key), getattr(self.data, "root", None),
                    keep_features)
                self._references[(key, keep_features, reference_file)] = have
            return have
        return cache

    def references(self) -> dict[str, tuple]:
        """name -> (reference, where from) of every metric (loaded or computed once)."""
        if not hasattr(self, "_per_metric"):
            self._per_metric = {
                name: m.reference(self.data, self.extractors[self._key_of[name]],
                                  self._cache(self._key_of[name]))
                for name, m in self.metrics.items()}
        return self._per_metric

    def compute(self, union: dict) -> dict:
        """Every metric's values from the gathered rows of one pass (``features/<key>``,
        ``logits/<key>``, ``labels``)."""
        refs, values, self.computed = self.references(), {}, []
        for name, metric in self.metrics.items():
            if metric.needs_labels and "labels" not in union:
                self._skip(name, "needs a conditional (or classifier-guided) model")
                continue
            if metric.needs_digits and "digits" not in union:
                self._skip(name, "needs a model on captions and prompts that name two digits")
                continue
            self.computed.append(name)
            key = self._key_of[name]
            fake = {"features": union[f"features/{key}"], "logits": union[f"logits/{key}"]}
            fake.update({k: union[k] for k in CONDITION_ROWS if k in union})
            values.update(metric.compute(fake, refs[name][0]))
        return values

    def settings(self) -> dict:
        """The features and reference of the metrics (one value when they share one)."""
        names = sorted({e.name for e in self.extractors.values()})
        sources = sorted({str(src) for _, src in self.references().values() if src})
        return {"features": names[0] if len(names) == 1 else names,
                "reference": sources[0] if len(sources) == 1 else (sources or None)}
