"""Models: ``registry`` (names -> specs and constructors), ``factory`` (``create_model``), ``weights``
(local weights loading), ``parts`` (head, backbone, embedding and Grad-CAM layer of a built model),
``reference`` (our reference architectures), ``ensemble`` (k-fold ensembles: mean of member logits)
and ``tta`` (test-time augmentation wrapper).

Importing ``reference`` here registers the reference models whichever ``lungxray.models`` module is
imported first; ``reference`` imports ``registry``, never the other way round. Import names from
their module (``from lungxray.models.factory import create_model``); nothing is re-exported here.
"""

from lungxray.models import ensemble, reference  # noqa: F401  (register the reference models and "ensemble")
