"""Online serving: retrain at window boundaries, switch models atomically, extend predictions.

See :class:`~alphamill.online.manager.OnlineManager` (Qlib's names and meaning),
:class:`~alphamill.online.strategy.RollingStrategy`, the state store
(:mod:`alphamill.online.state`) and :class:`~alphamill.online.update.PredUpdater`.
"""

from alphamill.online.state import OnlineStateStore, StrategyState, open_state_store

__all__ = ["OnlineStateStore", "StrategyState", "open_state_store"]
