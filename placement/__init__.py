"""placement: the Placement description and search strategies over it (scored by an injected objective)."""
from .placement import Gate, Placement
from .search import STRATEGIES, Constraint, SearchResult, list_strategies, search
from .space import SearchSpace

__all__ = ["Gate", "Placement", "STRATEGIES", "Constraint", "SearchResult", "list_strategies", "search", "SearchSpace"]
