"""Every node's ``fingerprint`` takes inputs that are linked, not constants: a training
node's saved name into a loader is the common case (the upstream signature stands for
the file)."""

from engine import Node
from engine.session import Session


def test_every_fingerprint_takes_linked_inputs(tmp_path):
    session = Session(tmp_path, device="cpu")
    own = [cls for cls in session.registry.classes.values()
           if getattr(cls.fingerprint, "__func__", None) is not Node.fingerprint.__func__]
    assert len(own) > 10
    for cls in own:
        cls.fingerprint({}, session.env)  # no KeyError for the absent (linked) names
