"""HTML building blocks for the report: tables through pandas ``Styler`` (numbers formatted, cells escaped, a best
row marked), figures as embedded PNG, and pages rendered by Jinja2 with autoescaping from ``templates/``."""
from __future__ import annotations

import base64
import hashlib
import io
from functools import lru_cache

import numpy as np
import pandas as pd
from markupsafe import Markup

__all__ = ["Markup", "figure", "number", "render", "table"]


def number(v, digits: int = 4) -> str:
    """A table cell as a person reads it: ``digits`` significant digits without ``e+05`` for ordinary sizes (thousands
    separated), ``yes``/``no`` for booleans, blank for missing."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "" if v is None or np.isnan(v) else ("∞" if v > 0 else "−∞")
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        a = abs(float(v))
        if a == 0 or 1e-4 <= a < 1e12:
            if a >= 10 ** digits:
                return f"{float(v):,.0f}"
            return f"{float(v):.{digits}g}" if a < 1 else f"{float(v):,.{max(digits - 1 - int(np.log10(a)), 0)}f}"
        return f"{float(v):.{digits - 1}e}"
    return str(v)


def table(df: pd.DataFrame, *, digits: int = 4, best: int | None = None, caption: str | None = None,
          formats: dict | None = None) -> Markup:
    """``df`` as an HTML table in a box that scrolls sideways on its own (the page never does): numbers through
    :func:`number` (``formats``: column -> format string or callable instead), every cell and header escaped,
    row ``best`` (a position) marked with the ``best`` class."""
    if df is None or not len(df.columns):
        return Markup("")
    df = df.reset_index(drop=True).dropna(axis=1, how="all")  # a column with nothing in it says nothing
    formats = dict(formats or {})
    for c in df.columns:  # a float column of whole numbers (an int column with a gap) shows them as ints
        v = df[c]
        if c not in formats and v.dtype.kind == "f" and v.notna().any() and (v.dropna() % 1 == 0).all() \
                and v.abs().max() < 1e15:
            formats[c] = lambda x: "" if pd.isna(x) else f"{int(x):,}"
    fmt = {c: formats.get(c, lambda v, d=digits: number(v, d)) for c in df.columns}
    st = df.style.format(fmt, escape="html").format_index(escape="html", axis=1).hide(axis="index")
    text = [c for c in df.columns if df[c].dtype.kind in "OSUb" and c not in formats]  # names, placements: left
    if text:
        st = st.set_table_styles({c: [{"selector": "th, td", "props": "text-align: left"}] for c in text},
                                 overwrite=False)
    if best is not None and 0 <= best < len(df):
        st = st.set_td_classes(pd.DataFrame([["best"] * df.shape[1] if i == best else [""] * df.shape[1]
                                             for i in range(len(df))], columns=df.columns))
    if caption:
        st = st.set_caption(Markup.escape(caption))
    st = st.set_table_attributes('class="data"')
    uid = hashlib.sha1(repr((df.to_csv(), caption, best)).encode()).hexdigest()[:10]  # stable, one per table
    body = st.set_uuid(uid).to_html()
    return Markup(f'<div class="scroll">{body}</div>')


def figure(fig, *, alt: str = "") -> Markup:
    """A matplotlib figure as an embedded PNG (closed afterwards), scaled down to the page's width."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    src = base64.b64encode(buf.getvalue()).decode()
    return Markup('<img alt="{}" src="data:image/png;base64,{}"/>').format(alt, src)


@lru_cache(maxsize=None)
def _env():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(loader=PackageLoader("analysis.present", "templates"), autoescape=select_autoescape(
        default=True, default_for_string=True), undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context) -> str:
    """Render ``templates/<template>`` with autoescaping: strings are escaped unless they are :class:`Markup`."""
    return _env().get_template(template).render(**context)
