"""Audits at scale: every frame of a dataset through saliency methods, faithfulness metrics and
sanity checks, into a resumable Zarr v3 store.

``fastviz.audit`` is both this package and a function: ``fv.audit(store, inputs, ...)`` runs
:func:`fastviz.audit.run.audit`.

* :mod:`~fastviz.audit.run`: the driver (:func:`audit`) and the summary table (:func:`summary`);
* :mod:`~fastviz.audit.store`: the store's layout, commit protocol and resume (:func:`open_store`
  to read one);
* :mod:`~fastviz.audit.metrics`: deletion and insertion curves (Petsiuk et al., BMVC 2018),
  adapted to regression, and map statistics;
* :mod:`~fastviz.audit.sanity`: the model-parameter randomisation test (Adebayo et al., NeurIPS
  2018);
* :mod:`~fastviz.audit.sources`: the inputs (drive logs, videos, image folders, lists of them);
* :mod:`~fastviz.audit.scenes`: scene groups by appearance (dense SIFT, GMM vocabulary, Fisher
  vectors, bag of visual words; needs scikit-learn, extra ``report``), for the report;
* :mod:`~fastviz.audit.strategies`: SpRAy (Lapuschkin et al. 2019), spectral clustering of
  maps with the number of clusters from the eigengap (scikit-learn, extra ``report``);
* :mod:`~fastviz.audit.report`: the self-contained HTML report of a store
  (:func:`write_report`; Jinja2, matplotlib, scikit-learn: extra ``report``).

>>> import fastviz as fv                                                # doctest: +SKIP
>>> result = fv.audit("audit.zarr", max_frames=64)                       # doctest: +SKIP
>>> print(result.summary())                                              # doctest: +SKIP
>>> store = fv.audit.open_store("audit.zarr")                            # doctest: +SKIP
>>> store["metrics/occlusion/deletion_auc"][:]                           # doctest: +SKIP
>>> fv.audit.write_report("audit.zarr", "report.html")                   # doctest: +SKIP
"""

from __future__ import annotations

import sys
import types

from . import metrics, sanity, sources, store
from .run import DEFAULT_BATCH, DEFAULT_CHUNK, DEFAULT_METHODS, AuditResult, audit, summary, weights_sha256
from .store import FORMAT, is_store, open_store
from .report import ReportResult, write_report

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_CHUNK",
    "DEFAULT_METHODS",
    "FORMAT",
    "AuditResult",
    "ReportResult",
    "audit",
    "is_store",
    "metrics",
    "open_store",
    "sanity",
    "sources",
    "store",
    "summary",
    "weights_sha256",
    "write_report",
]


class _AuditModule(types.ModuleType):
    """This package, callable as :func:`audit` (so ``fv.audit(...)`` runs an audit and
    ``fv.audit.open_store`` reads one)."""

    def __call__(self, *args, **kwargs) -> AuditResult:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _AuditModule
