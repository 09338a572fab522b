"""placement: the Placement description and search strategies over it (scored by an injected objective)."""
from .placement import Gate, Placement
from .search import SearchResult, search
from .selection import Constraint
from .strategies import STRATEGIES, list_strategies
from .space import SearchSpace, learned_placements
from . import optuna_search  # noqa: F401  registers the 'nsga2' strategy (Optuna is imported when it runs)

__all__ = ["Gate", "Placement", "STRATEGIES", "Constraint", "SearchResult", "list_strategies", "search", "SearchSpace",
           "learned_placements"]
