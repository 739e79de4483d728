"""Plotly figures the app and the notebooks draw (no Streamlit): confusion matrix, ROC and PR
curves, a detector's PR curve and learning curves, Recall@K bars, agreement heatmaps, 2-D
maps, EB histograms and the blood/skin scatter. The analysis modules compute the data;
the figures are built here.

Every scatter whose points stand for images carries the image id in ``customdata[0]``,
so a page can map a selection back to images (and show them through the safe view).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd


def _facet_title(annotation) -> None:
    """A facet's title without the ``column=`` plotly puts before the value."""
    annotation.update(text=annotation.text.split("=", 1)[-1])


def confusion_heatmap(confusion: pd.DataFrame, title: str = "Confusion matrix",
                      axes: tuple[str, str] = ("truth", "predicted")):
    """Heatmap of a confusion table (rows: ``axes[0]``, default truth; columns: ``axes[1]``,
    default predicted) with counts written in."""
    import plotly.graph_objects as go

    z = confusion.to_numpy()
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(c) for c in confusion.columns], y=[str(i) for i in confusion.index],
        colorscale="Blues", text=z, texttemplate="%{text}", hovertemplate="truth %{y}<br>pred %{x}<br>%{z}<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis_title=axes[1], yaxis_title=axes[0], height=360,
                      yaxis={"autorange": "reversed"}, margin={"t": 50, "b": 40})
    return fig


#: Marker colours of the named operating points (max-F1, R90, R95, thesis, then any other).
POINT_COLOURS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#e377c2")


def _point(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(false positive rate, recall, precision) of flagging ``s >= threshold``; NaN where undefined."""
    flagged = s >= threshold
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    p_, n_ = int(y.sum()), int((~y).sum())
    return (fp / n_ if n_ else np.nan, tp / p_ if p_ else np.nan, tp / (tp + fp) if tp + fp else np.nan)


def roc_pr_curves(y_true: Sequence, scores: Sequence, positive, threshold: float | None = None,
                  operating_points: dict[str, float] | bool | None = None):
    """ROC and precision-recall curves of binary scores (scikit-learn), with the operating
    point at ``threshold`` marked (red) and every named operating point marked too.

    Parameters
    ----------
    y_true : labels (n,); ``positive`` is the positive class
    scores : floats (n,)
    threshold : the current threshold, optional
    operating_points : ``{name: threshold}`` to mark, or True for the rules of
        :func:`lib.metrics.operating_points` read off these very scores (max-F1, R90, R95 and
        the thesis's lower of max-F1 and R90); skipped when only one class is present.

    Returns
    -------
    (roc_figure, pr_figure)
    """
    import plotly.graph_objects as go
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    y = np.asarray([str(v) == str(positive) for v in y_true], bool)
    s = np.asarray(scores, np.float64)
    fpr, tpr, _ = roc_curve(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    roc = go.Figure(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"ROC (AUC {auc(fpr, tpr):.3f})"))
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                             name="chance"))
    pr = go.Figure(go.Scatter(x=rec, y=prec, mode="lines",
                              name=f"PR (AP {average_precision_score(y, s):.3f})"))
    pr.add_hline(y=float(y.mean()), line_dash="dot", line_color="grey", annotation_text="prevalence")
    points: dict[str, float] = {}
    if operating_points is True:
        if 0 < y.sum() < len(y):
            from .metrics import operating_points as rules

            points = rules(y, s, positive=True)
    elif operating_points:
        points = dict(operating_points)
    marks = [(f"{name} ({t:.2f})", t, {"size": 11, "color": POINT_COLOURS[i % len(POINT_COLOURS)],
                                        "symbol": "diamond"})
             for i, (name, t) in enumerate(points.items())]
    if threshold is not None:
        marks.append((f"threshold {threshold:.2f}", threshold, {"size": 12, "color": "red"}))
    for label, t, marker in marks:
        x_roc, y_roc, precision = _point(y, s, float(t))
        roc.add_trace(go.Scatter(x=[x_roc], y=[y_roc], mode="markers", marker=marker, name=label))
        pr.add_trace(go.Scatter(x=[y_roc], y=[precision], mode="markers", marker=marker, name=label))
    roc.update_layout(title="ROC", xaxis_title="false positive rate", yaxis_title="true positive rate",
                      height=380, legend={"x": 0.4, "y": 0.05})
    pr.update_layout(title="Precision-recall", xaxis_title="recall", yaxis_title="precision", height=380,
                     yaxis={"range": [0, 1.02]}, legend={"x": 0.02, "y": 0.05})
    return roc, pr


def detector_pr(pr: dict):
    """A detector's validation precision-recall curve (:func:`lib.detector.validation_pr`)
    with each rule's operating point marked (max-F1, R90, R95 and the thesis's lower of
    max-F1 and R90, drawn as a ring: it sits on one of those two), the screening rule named,
    and the worst group's lowered screening point when there is one."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", name=pr["curve_name"],
                               line={"shape": "hv"}))
    fig.add_hline(y=pr["prevalence"], line_dash="dot", line_color="grey", annotation_text="prevalence")
    for i, pt in enumerate(pr["points"].to_dict("records")):
        ring = pt["rule"] == "thesis"
        marker = ({"size": 22, "color": POINT_COLOURS[i], "symbol": "circle-open", "line": {"width": 3}} if ring
                  else {"size": 13, "color": POINT_COLOURS[i], "symbol": "diamond"})
        fig.add_trace(go.Scatter(
            x=[pt["recall"]], y=[pt["precision"]], mode="markers" if ring else "markers+text", marker=marker,
            text=None if ring else [pt["name"]], textposition="top left",
            name=f"{pt['name']}: p ≥ {pt['threshold']:.3f}{' (screening)' if pt['screening'] else ''}",
            hovertemplate=f"{pt['name']}<br>threshold {pt['threshold']:.3f}<br>recall %{{x:.3f}}<br>"
                          f"precision %{{y:.3f}}<br>specificity {pt['specificity']:.3f}<extra></extra>"))
    low = pr.get("lowered")
    if low:
        fig.add_trace(go.Scatter(
            x=[low["recall"]], y=[low["precision"]], mode="markers+text", text=["screening"], textposition="bottom right",
            marker={"size": 13, "color": POINT_COLOURS[len(pr["points"])], "symbol": "star"},
            name=f"screening: p ≥ {low['threshold']:.3f} ({low['rule']} in group {low['set_by']})",
            hovertemplate=f"screening: min over groups of {low['rule']}, set by {low['set_by']}<br>"
                          f"threshold {low['threshold']:.3f}<br>recall %{{x:.3f}}<br>precision %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title=pr["title"], xaxis_title="recall", yaxis_title="precision", height=420,
                      yaxis={"range": [0, 1.03]}, xaxis={"range": [0, 1.02]}, legend={"x": 0.02, "y": 0.05})
    return fig


def learning_curve_figure(curve: pd.DataFrame, title: str = "Learning curve (validation)"):
    """Validation AUC, recall at the screening threshold and specificity there, against the
    number of labels, one point per training (:func:`lib.detector.learning_curve`)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for col, name in (("auc", "AUC"), ("recall", "recall at R95"), ("specificity", "specificity at R95")):
        fig.add_trace(go.Scatter(x=curve["labels"], y=curve[col], mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="labels", yaxis_title="validation", yaxis={"range": [0, 1.03]},
                      height=360, legend={"x": 0.02, "y": 0.05})
    return fig


def review_loop_figure(loop: pd.DataFrame, metric: str = "auc", title: str | None = None):
    """One line per strategy (and source, when the table has one) of ``metric`` on the rest of
    the pool against the labels added (:func:`lib.detector.simulate_review_loop`)."""
    import plotly.express as px

    df = loop.copy()
    colour = "strategy"
    if "source" in df:
        df["run"] = df["source"].astype(str) + " · " + df["strategy"]
        colour = "run"
    fig = px.line(df, x="labels_added", y=metric, color=colour, markers=True,
                  line_dash="strategy" if colour == "run" else None,
                  title=title or f"{metric} on the rest of the new source, by labels added")
    fig.update_layout(height=400, yaxis={"range": [0, 1.03]})
    return fig


def recall_bars(table: pd.DataFrame):
    """Grouped bars of Recall@K (from :func:`lib.retrieval.evaluate_retrieval`), per K and
    direction, one colour per group."""
    import plotly.express as px

    cols = [c for c in table.columns if "_R@" in c]
    long = table.melt(id_vars=["group"], value_vars=cols, var_name="metric", value_name="recall")
    long["direction"] = long["metric"].str.split("_R@").str[0].map({"t2i": "text→image", "i2t": "image→text"})
    long["K"] = "R@" + long["metric"].str.split("_R@").str[1]
    fig = px.bar(long, x="K", y="recall", color="group", facet_col="direction", barmode="group",
                 range_y=[0, 1.02], category_orders={"direction": ["text→image", "image→text"]})
    fig.for_each_annotation(_facet_title)
    fig.update_layout(height=380)
    return fig


def matrix_heatmap(matrix: pd.DataFrame, title: str, zmin: float = -1.0, zmax: float = 1.0):
    """Heatmap of a square model-by-model table with the values written in."""
    import plotly.graph_objects as go

    z = matrix.to_numpy(dtype=np.float64)
    names = [short_name(str(c)) for c in matrix.columns]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=[short_name(str(i)) for i in matrix.index], zmin=zmin, zmax=zmax,
                               colorscale="RdBu", text=np.round(z, 3), texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=260 + 50 * len(matrix), yaxis={"autorange": "reversed"},
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def short_name(text: str, n: int = 24) -> str:
    """A model label short enough for an axis: the ``open_clip:``/``hf:`` prefix and the
    random-weights tag shortened, then cut to ``n`` characters."""
    text = text.replace("open_clip:", "").replace("hf:", "").replace(" [random weights]", " (rnd)")
    return text if len(text) <= n else text[: n - 1] + "…"


def image_map(df: pd.DataFrame, color: str | None, title: str = "", hover: Sequence[str] = ("label",)):
    """Scatter of a 2-D map (columns x, y, id): one point per image, ``customdata[0]`` = id.

    A numeric ``color`` column gets a continuous scale, anything else one colour per value.
    """
    import plotly.express as px

    hov = [c for c in hover if c in df.columns]
    kwargs = {}
    if color is not None and color in df and not pd.api.types.is_numeric_dtype(df[color]):
        df = df.assign(**{color: df[color].astype("string").fillna("(none)")})
        kwargs["category_orders"] = {color: sorted(df[color].unique())}
    fig = px.scatter(df, x="x", y="y", color=color if color in df else None, custom_data=["id"],
                     hover_data=hov or None, title=title, **kwargs)
    fig.update_traces(marker={"size": 6, "opacity": 0.75})
    if "category_orders" in kwargs:
        distinct_colours(fig)
    fig.update_layout(height=460, xaxis={"showticklabels": False, "title": None},
                      yaxis={"showticklabels": False, "title": None}, dragmode="select",
                      legend={"title": color, "orientation": "h", "y": -0.05})
    return fig


#: Qualitative colours for categories (D3's, red second: two sorted labels such as
#: non_sensitive / sensitive come out blue / red).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def distinct_colours(fig):
    """Give every legend group of ``fig`` its own colour from :data:`PALETTE` (in trace order),
    so categories stay distinguishable under Streamlit's theme. Returns ``fig``."""
    groups: list[str] = []
    for tr in fig.data:
        g = tr.legendgroup or tr.name
        if not g:
            continue
        if g not in groups:
            groups.append(g)
        colour = palette(groups.index(g) + 1)[-1]
        if tr.type in ("histogram", "scatter", "scattergl", "bar"):
            tr.marker.color = colour
    return fig


def selected_ids(event, points: pd.DataFrame | None = None) -> list[str]:
    """Image ids of the points selected in a ``st.plotly_chart(on_select=...)`` event.

    Reads ``customdata[0]`` of each selected point (see :func:`image_map`,
    :func:`blood_skin_scatter`); works on the event object or its dict form.
    With ``points`` (the map's frame: x, y, id, every point, drawn or not) a box or lasso
    selects every point inside it (:func:`region_mask`), not only the drawn ones: exact on a
    map that draws a sample (:func:`linked_map`); a click still selects the clicked point.
    """
    if event is None:
        return []
    sel = event.get("selection") if isinstance(event, dict) else getattr(event, "selection", None)
    if sel is None:
        return []
    if points is not None:
        inside = region_mask(sel, points["x"].to_numpy(np.float64), points["y"].to_numpy(np.float64))
        if inside is not None:
            return list(dict.fromkeys(points["id"].to_numpy()[inside].astype(str).tolist()))
    points_ = sel.get("points") if isinstance(sel, dict) else getattr(sel, "points", [])
    out = []
    for p in points_ or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if cd is None:
            continue
        v = cd[0] if isinstance(cd, (list, tuple)) else cd
        if v is not None and str(v) not in out:
            out.append(str(v))
    return out


def _get(obj, key: str):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def region_mask(selection, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Which points (x, y) lie inside the boxes and lassos of a plotly selection (the
    ``selection`` of a Streamlit event: ``box`` [{x: [x0, x1], y: [y0, y1]}], ``lasso``
    [{x: [...], y: [...]}], data coordinates); None when it has neither (a click).

    A box is closed; a lasso is its polygon under the even-odd rule (as plotly's own
    test). Several regions (shift-drag) are unioned.
    """
    boxes, lassos = _get(selection, "box") or [], _get(selection, "lasso") or []
    if not boxes and not lassos:
        return None
    out = np.zeros(len(x), bool)
    for b in boxes:
        bx, by = np.asarray(_get(b, "x"), np.float64), np.asarray(_get(b, "y"), np.float64)
        if len(bx) >= 2 and len(by) >= 2:
            out |= (x >= bx.min()) & (x <= bx.max()) & (y >= by.min()) & (y <= by.max())
    for poly in lassos:
        px, py = np.asarray(_get(poly, "x"), np.float64), np.asarray(_get(poly, "y"), np.float64)
        if len(px) >= 3 and len(px) == len(py):
            out |= in_polygon(x, y, px, py)
    return out


def in_polygon(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of points (x, y) against the polygon (px, py) (closed
    implicitly). Points outside its bounding box are never tested; the rest are sorted by y
    once, so each edge toggles only the points level with it (a lasso of hundreds of short
    edges over 1M points: tens of ms)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    out = np.zeros(len(x), bool)
    cand = np.flatnonzero((x >= px.min()) & (x <= px.max()) & (y >= py.min()) & (y <= py.max()))
    if not len(cand):
        return out
    order = np.argsort(y[cand], kind="stable")
    ys, xs = y[cand][order], x[cand][order]
    inside = np.zeros(len(cand), bool)
    for x1, y1, x2, y2 in zip(px, py, np.roll(px, 1), np.roll(py, 1), strict=True):
        if y1 == y2:
            continue
        # the points with min(y1, y2) <= y < max(y1, y2) cross this edge's level
        a, b = np.searchsorted(ys, min(y1, y2), "left"), np.searchsorted(ys, max(y1, y2), "left")
        if a < b:
            inside[a:b] ^= xs[a:b] < x1 + (ys[a:b] - y1) * (x2 - x1) / (y2 - y1)
    out[cand[order]] = inside
    return out


def count_bars(values: pd.Series, name: str, title: str | None = None):
    """Bar chart of how many rows hold each value of ``values`` (missing as ``(none)``), most first."""
    import plotly.express as px

    counts = values.astype("string").fillna("(none)").value_counts().rename_axis(name).reset_index()
    fig = px.bar(counts, x=name, y="count", title=title or f"Images per {name}")
    fig.update_layout(height=320)
    return fig


def iou_box(ious: pd.DataFrame, by: str):
    """Box plot (with points) of per-image ``iou`` per value of column ``by``."""
    import plotly.express as px

    fig = px.box(ious, x=by, y="iou", points="all", title=f"IoU per {by}")
    fig.update_layout(height=340)
    return fig


def jaccard_histogram(per_item: pd.DataFrame, k: int):
    """Overlaid histograms of each image's Jaccard@k per model pair, from the ``jaccard:<pair>``
    columns of :func:`lib.compare.neighbourhood_overlap`'s per-item table."""
    import plotly.express as px

    cols = [c for c in per_item.columns if c.startswith("jaccard:")]
    long = per_item.melt(id_vars=["id"], value_vars=cols, var_name="pair", value_name="jaccard")
    long["pair"] = long["pair"].str[len("jaccard:"):]
    fig = px.histogram(long, x="jaccard", color="pair", barmode="overlay", nbins=20,
                       title=f"Jaccard@{k} of each image's neighbour sets")
    fig.update_layout(height=340)
    return fig


def palette(n: int) -> tuple[str, ...]:
    """``n`` distinguishable colours: :data:`PALETTE` up to 10, then plotly's 26-colour Alphabet
    and 24-colour Light24 sets, so categories do not share a colour before 60."""
    import plotly.express as px

    more = [c for c in (*px.colors.qualitative.Alphabet, *px.colors.qualitative.Light24) if c not in PALETTE]
    colours = (*PALETTE, *more)
    return tuple(colours[i % len(colours)] for i in range(n))


#: Maps with more points than this are drawn with WebGL.
GL_ABOVE = 20_000
#: A map draws at most this many points (a seeded uniform sample beyond): what the browser
#: receives stays a few MB at any size; the legend counts and selections are of every point.
DRAW_MAX = 50_000


def draw_mask(n: int, limit: int = DRAW_MAX, *, first: np.ndarray | None = None, always=None,
              seed: int = 0) -> np.ndarray:
    """Which of ``n`` points a map draws: all of them up to ``limit``, else a seeded uniform
    sample of ``limit``: of the ``first`` points (a bool mask: a selection) up to ``limit``,
    the others filling the rest; plus the rows ``always`` (the open image, hover previews)."""
    keep = np.zeros(n, bool)
    if n <= limit:
        keep[:] = True
    else:
        rng = np.random.default_rng(seed)
        groups = [np.arange(n)] if first is None else [np.flatnonzero(first), np.flatnonzero(~first)]
        left = limit
        for rows in groups:
            take = rows if len(rows) <= left else rng.choice(rows, left, replace=False)
            keep[take] = True
            left -= len(take)
    if always is not None:
        keep[np.asarray(always, np.int64)] = True
    return keep


def linked_map(df: pd.DataFrame, color: str | None, *, selected=None, highlight: str | None = None,
               title: str = "", hover: Sequence[str] = ("label",), always: Sequence[str] = (),
               derive: Mapping[str, Callable[[pd.DataFrame], Sequence]] | None = None, limit: int = DRAW_MAX):
    """A 2-D map (columns x, y, id), WebGL (``scattergl``) above :data:`GL_ABOVE` points,
    ``customdata[0]`` = id, linked to the gallery.

    Above ``limit`` points it draws a sample (:func:`draw_mask`); the legend names each
    trace with its exact count over every point, the title says how many are drawn, and
    ``layout.meta`` holds ``points`` (all), ``drawn`` and ``counts`` ({trace: count}).
    Select with :func:`selected_ids` given the whole frame, so a box or lasso is exact.

    Parameters
    ----------
    color : a column: numbers get a continuous scale, anything else one colour per value.
    selected : ids of a selection: the other points stay visible, in grey.
    highlight : an id drawn as a large ringed marker (the image open in the detail view).
    always : ids drawn whatever the sample (e.g. those with hover previews).
    derive : {hover column: function of the drawn rows' frame -> its values}: columns costly
        per row (file names) computed for the drawn points only.
    """
    import plotly.graph_objects as go

    df = df.reset_index(drop=True)
    n = len(df)
    id_col = df["id"].astype("string")
    sel = None if selected is None else id_col.isin(list(map(str, selected))).to_numpy(dtype=bool, na_value=False)
    keep = np.ones(n, bool) if sel is None else sel
    numeric = color is not None and color in df and pd.api.types.is_numeric_dtype(df[color])
    values = None
    if not numeric:
        values = df[color].astype("string").fillna("(none)") if color in df else pd.Series("all", index=df.index)
    counts: dict[str, int] = {}
    if sel is not None and (~sel).any():
        counts["not selected"] = int((~sel).sum())
    if numeric:
        counts[color] = int(keep.sum())
    else:
        vc = values[keep].value_counts()
        counts.update({str(c): int(vc[c]) for c in sorted(vc.index.astype(str))})
    pinned = [str(h) for h in [highlight, *always] if h is not None]
    pin_rows = np.flatnonzero(id_col.isin(pinned).to_numpy(dtype=bool, na_value=False)) if pinned else None
    drawn = draw_mask(n, limit, first=sel, always=pin_rows)
    sub = df[drawn].reset_index(drop=True)
    for col, fn in (derive or {}).items():
        sub[col] = list(fn(sub))
    sub_sel = None if sel is None else sel[drawn]
    sub_values = None if values is None else values[drawn].to_numpy(dtype=object)
    sub_ids = sub["id"].astype(str).to_numpy()
    # SVG up to GL_ABOVE points, WebGL above (fluid at 100k+). No dragmode: with one set,
    # Streamlit turns click selection off; the modebar offers box and lasso.
    Scatter = go.Scattergl if len(sub) > GL_ABOVE or len(sub) < n else go.Scatter
    hov = [c for c in hover if c in sub.columns]
    # customdata: the id alone; the hover lines as one text per point (half the objects
    # plotly and Streamlit deep-copy and encode, at 50k points a second of every run)
    custom = sub_ids.astype(object)
    text = pd.Series("", index=sub.index, dtype="string")
    for i, c in enumerate(hov):
        text = text + ("<br>" if i else "") + f"{c} " + sub[c].astype("string").fillna("<NA>")
    text = text.to_numpy(dtype=object)
    x, y = sub["x"].to_numpy(), sub["y"].to_numpy()
    fig = go.Figure()
    base = {"mode": "markers", "hovertemplate": "%{text}<extra></extra>"}

    def name(key: str) -> str:
        return f"{key} ({counts[key]:,})"

    if sub_sel is not None and "not selected" in counts:
        rest = ~sub_sel
        fig.add_trace(Scatter(x=x[rest], y=y[rest], customdata=custom[rest], text=text[rest], name=name("not selected"),
                              marker={"size": 5, "color": "#c7c7c7", "opacity": 0.5}, **base))
    sub_keep = np.ones(len(sub), bool) if sub_sel is None else sub_sel
    if numeric:
        fig.add_trace(Scatter(x=x[sub_keep], y=y[sub_keep], customdata=custom[sub_keep], text=text[sub_keep], name=name(color),
                              marker={"size": 6, "color": sub[color].to_numpy()[sub_keep], "colorscale": "Viridis",
                                      "showscale": True, "colorbar": {"title": color}}, **base))
    else:
        cats = [c for c in counts if c != "not selected"]
        for cat, colour in zip(cats, palette(len(cats)), strict=True):
            m = sub_keep & (sub_values == cat)
            fig.add_trace(Scatter(x=x[m], y=y[m], customdata=custom[m], text=text[m], name=name(cat),
                                  marker={"size": 6, "color": colour, "opacity": 0.8}, **base))
    if highlight is not None and (sub_ids == str(highlight)).any():
        h = sub_ids == str(highlight)
        fig.add_trace(Scatter(x=x[h], y=y[h], customdata=custom[h], text=text[h], name="this image",
                              marker={"size": 18, "color": "rgba(0,0,0,0)", "line": {"width": 3, "color": "#000"}},
                              **base))
    n_drawn = int(drawn.sum())
    if n_drawn < n:
        title = (f"{title}<br>" if title else "") + \
            f"<sup>{n_drawn:,} of {n:,} points drawn (a uniform sample); counts and selections are of all</sup>"
    fig.update_layout(title=title, height=520, xaxis={"showticklabels": False, "title": None},
                      yaxis={"showticklabels": False, "title": None}, legend={"orientation": "h", "y": -0.05},
                      margin={"t": (60 if n_drawn < n else 40) if title else 10, "b": 10},
                      meta={"points": n, "drawn": n_drawn, "counts": counts})
    return fig


def benchmark_bars(table: pd.DataFrame, comparison: pd.DataFrame) -> list:
    """One bar chart per task of a benchmark long table (:mod:`lib.benchmark`): the headline
    metric of every (dataset, model), the papers' values (``comparison``) as dotted lines."""
    import plotly.graph_objects as go

    figs = []
    ok = table[table["metric"] != "skipped"]
    headline = {"zeroshot": "f1_macro_zero", "probe": "f1_macro_zero", "retrieval": "mean_R", "detector": "double_f1",
                "eb": "double_f1", "segmentation": "mean_iou", "grid": "f1_macro_zero", "finetune": "f1_macro_zero"}
    for task, metric in headline.items():
        t = ok[(ok["task"] == task) & (ok["metric"] == metric)]
        if task in ("detector", "finetune"):
            t = t[t["variant"] == "thesis"]
        elif task == "eb":
            t = t[t["variant"] != ""]
        if t.empty:
            continue
        label = t["model"] + np.where(t["random_weights"], " (random weights)", "") + \
            np.where(t["variant"] != "", " · " + t["variant"], "")
        fig = go.Figure()
        for ds in sorted(t["dataset"].unique()):
            sel = t["dataset"] == ds
            fig.add_trace(go.Bar(x=label[sel], y=t.loc[sel, "value"], name=f"here: {ds}"))
        paper = comparison[(comparison["task"] == task) & (comparison["metric"] == metric)]
        for _, p in paper.drop_duplicates(["paper", "paper_model"]).iterrows():
            fig.add_hline(y=float(p["paper_value"]), line_dash="dot",
                          annotation_text=f"{p['paper']}: {p['paper_model']} {p['paper_value']:.3f}",
                          annotation_position="top left")
        fig.update_layout(title=f"{task}: {metric} (dotted: the papers' numbers, on their data)", barmode="group",
                          yaxis={"range": [0, 1.05]}, height=420)
        figs.append(fig)
    return figs


def hover_map_html(fig, previews: dict[str, tuple[str, str]], plotly_src: str, *, height: int = 540) -> str:
    """A self-contained page drawing ``fig`` (a map whose points carry the image id in
    ``customdata[0]``) with plotly.js from ``plotly_src``, showing ``previews[id]`` =
    (image URL, caption) beside the cursor while it hovers a point. The caller chooses the
    images (the safe view's renderings); a point without a preview shows its hover text only."""
    import json

    import plotly.io as pio

    figure = pio.to_json(fig, validate=False)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<style>body{{margin:0;font-family:sans-serif}}#tip{{position:fixed;display:none;pointer-events:none;z-index:10;
background:#fff;border:1px solid #bbb;border-radius:4px;padding:4px;box-shadow:0 2px 6px rgba(0,0,0,.25);
max-width:180px;font-size:11px}}#tip img{{display:block;max-width:170px;max-height:170px}}</style>
<script src="{plotly_src}"></script></head><body>
<div id="map" style="height:{int(height)}px"></div>
<div id="tip"><img id="tip-img" alt=""><div id="tip-cap"></div></div>
<script>
const fig = {figure};
const previews = {json.dumps(previews)};
const tip = document.getElementById('tip'), img = document.getElementById('tip-img'),
      cap = document.getElementById('tip-cap');
fig.layout.height = {int(height)};
Plotly.newPlot('map', fig.data, fig.layout, {{displaylogo: false, responsive: true}}).then(gd => {{
  gd.on('plotly_hover', e => {{
    const p = e.points[0], c = p.customdata, id = String(Array.isArray(c) ? c[0] : c), v = previews[id];
    if (!v) {{ tip.style.display = 'none'; return; }}
    img.src = v[0]; img.alt = 'image ' + id.slice(0, 16); cap.textContent = v[1];
    const ev = e.event, w = window.innerWidth;
    tip.style.left = Math.min(ev.clientX + 14, w - 190) + 'px';
    tip.style.top = Math.max(ev.clientY - 90, 0) + 'px';
    tip.style.display = 'block';
  }});
  gd.on('plotly_unhover', () => {{ tip.style.display = 'none'; }});
}});
</script></body></html>"""


# --------------------------------------------------------------------------- EB colour scores


def eb_histograms(
    df: pd.DataFrame,
    by: str | None = "label",
    facet: str | None = "split",
    *,
    x: str = "eb",
    nbins: int = 40,
    histnorm: str | None = "percent",
    facet_wrap: int = 3,
    cut: float | None = None,
    title: str | None = None,
):
    """EB histograms, overlaid per ``by`` value, one panel per ``facet`` value (MedGore Fig. 3).

    Parameters
    ----------
    df : DataFrame with column ``x`` (default ``eb``, see :func:`lib.colorscore.eb_table`) and optionally
        ``by`` (e.g. label) and ``facet`` (e.g. split or dataset variant); a missing
        ``by``/``facet`` column means one colour / one panel.
    nbins : bins over the whole range of ``x``; every trace in every panel uses the same
        bins, so overlaid bars line up.
    histnorm : plotly normalisation per trace ("percent" compares unbalanced labels;
        None for counts).
    cut : draw this EB cut as a dashed line (the safe view's threshold).
    title : the figure's title (default: what is plotted, and how many images).

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.express as px

    color = by if by is not None and by in df.columns else None
    col = facet if facet is not None and facet in df.columns else None
    orders = {c: sorted(df[c].dropna().unique(), key=str) for c in (color, col) if c is not None}
    fig = px.histogram(
        df, x=x, color=color, facet_col=col, facet_col_wrap=facet_wrap if col else 0,
        barmode="overlay", opacity=0.6, histnorm=histnorm, category_orders=orders,
    )
    values = df[x].to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        size = (hi - lo) / nbins if hi > lo else 1.0
        fig.update_traces(xbins={"start": lo, "end": hi + size * 1e-6, "size": size})
        top = max(hi, cut if cut is not None else hi)
        bottom = min(lo, cut if cut is not None else lo)
        fig.update_xaxes(range=[bottom - size, top + size])  # the highest EB (and the cut) stay in view
    if cut is not None:
        fig.add_vline(x=float(cut), line_dash="dash", line_color="#444",
                      annotation_text=f"cut {cut:g}", annotation_position="top right")
    fig.for_each_annotation(_facet_title)
    fig.update_xaxes(title_text="EB = max(z_blood, z_skin)" if x == "eb" else x)
    n = int(np.isfinite(df[x].to_numpy(dtype=np.float64)).sum())
    fig.update_layout(title=title or f"{'EB' if x == 'eb' else x} of {n} image{'s' if n != 1 else ''}"
                                     + (f" by {color}" if color else ""))
    return fig


def blood_skin_scatter(
    df: pd.DataFrame,
    color: str | None = "label",
    hover_data: list[str] | None = None,
    *,
    x: str = "blood",
    y: str = "skin",
    id_col: str = "id",
):
    """Blood-like fraction vs skin-like fraction, one point per image.

    Every point's ``customdata[0]`` is its image id (``id_col``), so a page can map a
    click or selection back to the image.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.express as px

    hover = [c for c in (hover_data or []) if c in df.columns and c != id_col]
    fig = px.scatter(
        df, x=x, y=y, color=color if color is not None and color in df.columns else None,
        custom_data=[id_col], hover_data=hover or None,
        category_orders={color: sorted(df[color].dropna().unique(), key=str)}
        if color is not None and color in df.columns else None,
    )
    fig.update_xaxes(title_text="blood-like fraction", range=[-0.02, 1.02])
    fig.update_yaxes(title_text="skin-like fraction", range=[-0.02, 1.02])
    fig.update_traces(marker={"size": 6, "opacity": 0.7})
    return fig
