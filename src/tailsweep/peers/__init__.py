"""Peer libraries' own loss implementations behind the ``TailLoss`` contract (optional extra ``peers``).

One module per library: ``coral_pytorch`` (CORAL, CORN), ``dlordinal`` (CDW-CE, EMD, soft-label losses) and
``timm`` (asymmetric loss); ``base`` imports a peer on demand.

Each adapter runs the third-party function or module unchanged (its own label encoding, normalisation and
numerics) and adds only what the template needs from a loss: its parametrization (head and probabilities, as
the library's own loss of the same name), target validation and the reduction. They show that any loss callable
plugs into the template with a few lines, and let the quality benchmark compare the peers with this library on
the same backbone and budget:

    tailsweep-train experiment=counting loss=peer/coral       # coral-pytorch's coral_loss
    tailsweep-train experiment=multilabel loss=peer/asl       # timm's AsymmetricLossMultiLabel

Adapter -> peer implementation (same loss in this library):

- ``PeerCORALLoss`` -> coral-pytorch ``coral_loss`` on ``levels_from_labelbatch`` levels (``CORALLoss``: equal)
- ``PeerCORNLoss`` -> coral-pytorch ``corn_loss`` (``CORNLoss``: same total, averaged over tasks, not samples)
- ``PeerCDWCELoss`` -> dlordinal ``CDWCELoss`` (``CDWCELoss``: equal at finite logits)
- ``PeerEMDLoss`` -> dlordinal ``EMDLoss`` (``RankedProbabilityScoreLoss``: equal; ``SquaredEMDLoss`` x C)
- ``PeerSoftLabelLoss`` -> dlordinal ``TriangularLoss``, ``BinomialLoss``, ... (``UnimodalLoss``: own tables)
- ``PeerAsymmetricLoss`` -> timm ``AsymmetricLossMultiLabel`` (``AsymmetricLoss``: equal but for the eps clamp)

The peers are imported when an adapter is constructed, never when this module is imported; a missing one raises
an ``ImportError`` that says ``pip install 'tailsweep[peers]'``. Adapters whose peer returns only the batch mean
(CORN, CDW-CE, EMD) accept only ``reduction="mean"`` and drop ignored samples before calling the peer.
"""

from tailsweep.peers.base import PEER_DISTRIBUTIONS, available_peers, import_peer
from tailsweep.peers.coral_pytorch import PeerCORALLoss, PeerCORNLoss
from tailsweep.peers.dlordinal import (
    DLORDINAL_SOFT_LABEL_LOSSES,
    PeerCDWCELoss,
    PeerEMDLoss,
    PeerOrdinalModuleLoss,
    PeerSoftLabelLoss,
)
from tailsweep.peers.timm import PeerAsymmetricLoss

__all__ = [
    "DLORDINAL_SOFT_LABEL_LOSSES",
    "PEER_DISTRIBUTIONS",
    "PeerAsymmetricLoss",
    "PeerCDWCELoss",
    "PeerCORALLoss",
    "PeerCORNLoss",
    "PeerEMDLoss",
    "PeerOrdinalModuleLoss",
    "PeerSoftLabelLoss",
    "available_peers",
    "import_peer",
]
