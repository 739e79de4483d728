"""Gallery: the dataset's images through the safe view, filtered and paged."""

import streamlit as st

from lib import gallery, ui
from lib import workflow as wf
from lib.detector import GROUPS, filter_mask
from lib.sensitivity import EVIDENCE_VALUES

ctx = ui.setup("Gallery", ":material/grid_view:")
st.title("Gallery")

with ui.guard():
    ds = ctx.require_dataset()
    images = ds.images
    eb = ctx.eb()
    decision = ctx.decision()
    preds = ctx.predictions()
    store = ui.annotation_store()
    who = ui.annotator_name()
    schemas = {s.name: s for s in store.schemas(ctx.name)}

    with st.expander("Filters", expanded=True):
        opts = ui.filter_options(ctx.name)
        cols = st.columns(4)
        equals = {}
        for i, (col, values) in enumerate(opts.items()):
            with cols[i % 4]:
                equals[col] = st.multiselect(col, values, key=f"g-f-{col}", placeholder="all")
        c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
        finite = eb["eb"].dropna()
        eb_range = None
        if len(finite):
            lo, hi = float(finite.min()), float(finite.max())
            if hi > lo:
                chosen = c1.slider("EB score", lo, hi, (lo, hi), key="g-eb", format="%.2f")
                eb_range = chosen if chosen != (lo, hi) else None
        present = set(decision["evidence"].unique())
        evidence = c2.multiselect("Safe-view evidence", [v for v in EVIDENCE_VALUES if v in present], key="g-ev",
                                  placeholder="all", help="Why each image is censored or shown: work through the "
                                  "images not yet screened, check what a detector cleared, …")
        which = c3.radio("Shown", ["all", "censored", "raw"], key="g-sens", horizontal=False)
        prefix = c4.text_input("Id starts with", key="g-prefix")
        f1, f2, f3 = st.columns([2, 2, 2])
        find = f1.text_input("Find: file name or path contains", key="g-find", placeholder="e.g. foot-ulcer-0027")
        status = f2.multiselect("Annotation", list(wf.STATUSES), key="g-status", placeholder="any",
                                help="unreviewed: nobody labelled it; mine / not mine: by the annotator name in the "
                                     "sidebar; disputed: annotators disagree and nobody resolved it.")
        status_set = f3.selectbox("in label set", list(schemas), key="g-status-set", format_func=ui.label_set_name,
                                  disabled=not status)
        pred_values, score_range, det_keep = None, None, None
        if preds is not None:
            p1, p2 = st.columns(2)
            classes = sorted(preds["pred"].dropna().astype(str).unique())
            pred_values = p1.multiselect("Predicted class", classes, key="g-pred", placeholder="all")
            sr = p2.slider("Predicted score (p)", 0.0, 1.0, (0.0, 1.0), key="g-score")
            score_range = sr if sr != (0.0, 1.0) else None
            if "unfamiliar" in preds:  # a detector's screening
                d1, d2, d3 = st.columns([2, 1, 1])
                det_groups = d1.multiselect(
                    "Detector decision", list(GROUPS), key="g-det", placeholder="all",
                    help="flagged: p at or above the threshold; unfamiliar: below it but far from every training "
                         "image; uncertain: below it but unsteady under flips and rotations; cleared: the rest.")
                yes_no = {"any": None, "yes": True, "no": False}
                unc = d2.radio("Uncertain", list(yes_no), horizontal=True, key="g-unc")
                unf = d3.radio("Unfamiliar", list(yes_no), horizontal=True, key="g-unf")
                det_keep = filter_mask(images, preds, groups=det_groups, uncertain=yes_no[unc],
                                       unfamiliar=yes_no[unf], threshold=ctx.pred_threshold)
        else:
            st.caption("Choose a prediction table in the sidebar to filter on a model's predictions.")

    sel = ui.selection(ctx.name)
    only_sel = False
    if sel:
        s1, s2 = st.columns([4, 1])
        only_sel = s1.toggle(f"Only the {gallery.plural(len(sel['ids']), 'image')} selected on *{sel['source']}*", value=True,
                             key="g-only-sel")
        s2.button("Clear selection", on_click=ui.clear_selection)

    with_status = None
    if status:
        states = ui.annotation_states(ctx.name, status_set, who)
        with_status = wf.ids_with_status(images["id"], states, status)
    picked_ids = sel["ids"] if only_sel else None
    if with_status is not None:
        picked_ids = [i for i in (picked_ids or images["id"]) if i in with_status]
    rows = gallery.filter_rows(
        images, equals=equals, eb=eb, eb_range=eb_range, preds=preds, pred_values=pred_values,
        score_range=score_range, ids=picked_ids, id_prefix=prefix or None, path_contains=find or None,
        decision=decision, evidence=evidence, censored=None if which == "all" else which == "censored")
    if det_keep is not None:
        rows = rows[det_keep[rows]]

    top = st.columns([3, 1, 1])
    top[0].markdown(gallery.shown_summary(len(rows), len(images),
                                          decision if len(rows) == len(decision) else decision.iloc[rows], ctx.safe_view))
    page_size = top[1].selectbox("Per page", [24, 48, 96], key="g-size")
    n_pages = gallery.page_bounds(len(rows), page_size, 1)[2]
    signature = (tuple(rows[:50]), len(rows), page_size)
    if st.session_state.get("g-signature") != signature:  # new filters: back to the first page
        st.session_state["g-signature"] = signature
        if st.session_state.get("g-signature-seen"):
            ui.set_page_param("page", "1")
        st.session_state["g-signature-seen"] = True
    try:
        wanted = int(ui.page_param("page", "1") or 1)
    except ValueError:
        wanted = 1
    st.session_state["g-page"] = min(max(1, wanted), n_pages)
    page = top[2].number_input(f"Page (of {n_pages})", 1, n_pages, key="g-page",
                               on_change=lambda: ui.set_page_param("page", str(st.session_state["g-page"])))
    start, stop, n_pages, page = gallery.page_bounds(len(rows), page_size, page)
    ui.set_page_param("page", str(page))

    shown = eb.iloc[rows[start:stop]].assign(path=images["path"].take(rows[start:stop]).to_numpy())
    picked = ui.picked(ctx.name)
    ui.bulk_bar(ctx, store, who, schemas, lambda: images["id"].array[rows], shown["id"].tolist(),
                n_filtered=ds.n_distinct(rows))

    def caption(rec) -> str:
        lab = rec["label"] if isinstance(rec["label"], str) else "(no label)"
        score = f" · EB {rec['eb']:+.2f}" if rec["eb"] == rec["eb"] else ""
        return f"{lab}{score} · {gallery.file_name(rec['path'])}"

    def actions(rec, key) -> None:
        on = rec["id"] in picked  # in the key: "select all" and "clear" redraw the box ticked or not
        st.checkbox("Select", value=on, key=f"pick-{key}-{int(on)}", on_change=ui.toggle_pick,
                    args=(ctx.name, rec["id"]))
        ui.nav_link("neighbours", "Neighbours", ctx, icon=":material/hub:", id=rec["id"])

    ui.image_grid(ctx, shown, key="g", columns=6, caption=caption, actions=actions)
