"""Agreement: how far two annotators agree, and the images where they do not, to resolve."""

import streamlit as st

from lib import charts, gallery, ui
from lib import workflow as wf
from lib.annotations import CONSENSUS, scope

ctx = ui.setup("Agreement", ":material/group:")
st.title("Annotator agreement")
ss = st.session_state

with ui.guard():
    ds = ctx.require_dataset()
    store = ui.annotation_store()
    who = ui.annotator_name()
    schemas = {s.name: s for s in store.schemas(ctx.name)}
    set_name = st.selectbox("Label set", list(schemas), key="ag-set", format_func=ui.label_set_name,
                            help="Agreement is computed per label set (Cohen's κ and Gwet's AC1 over all its "
                                 "values; several tags per image count as one combined label).")
    where = scope(ctx.name, set_name)
    names = [a for a in store.annotators(where) if a != CONSENSUS]
    if len(names) < 2:
        st.info(f"**Agreement needs two annotators** on dataset `{ctx.name}` (now: {', '.join(names) or 'none'}). "
                "Each labels the same review sample on the Annotate page under their own name.")
        ui.nav_link("annotate", "Open Annotate", ctx, icon=":material/edit_note:")
        st.stop()
    labels = list(schemas[set_name].values)
    c1, c2 = st.columns(2)
    a = c1.selectbox("Annotator A", names, index=0, key="ag-a")
    others = [n for n in names if n != a]
    b = c2.selectbox("Annotator B", others, index=0, key="ag-b")

    res = wf.pair_agreement(store, where, a, b)
    if res is None:
        st.info(f"`{a}` and `{b}` have not labelled any image in common yet.")
    else:
        m = st.columns(5)
        m[0].metric("Images both labelled", res["n"])
        m[1].metric("Agreement", f"{res['percent_agreement']:.1%}")
        m[2].metric("Cohen κ", f"{res['kappa']:.3f}")
        m[3].metric("Gwet AC1", f"{res['ac1']:.3f}", help="Stable when one label dominates (κ's paradox)")
        m[4].metric("F1 (macro, A as reference)", f"{res['f1_macro']:.3f}")
        st.plotly_chart(charts.confusion_heatmap(res["confusion"], title=f"{a} (rows) vs {b} (columns)",
                                                 axes=(a, b)), width="stretch")

    st.subheader("To resolve")
    t1, t2 = st.columns(2)
    with_maybe = t1.toggle("Include Maybe cases", True, key="ag-maybe")
    open_only = t2.toggle("Only unresolved", True, key="ag-open")
    todo = wf.to_resolve(store, where, a, b, include_maybe=with_maybe, unresolved_only=open_only)
    n_res = int(store.current(where, CONSENSUS)["image_id"].isin(store.pairs(where, a, b)["image_id"]).sum())
    st.markdown(f"**{gallery.plural(len(todo), 'image')}** to look at · {n_res} resolved so far. A resolution is stored as the "
                f"`{CONSENSUS}` label (with who decided), and the export uses it.")
    if who is None:
        st.warning("Type your annotator name in the sidebar to resolve labels.")
    if len(todo):
        size = 12
        n_pages = gallery.page_bounds(len(todo), size, 1)[2]
        page = st.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key="ag-page")
        start, stop, _, _ = gallery.page_bounds(len(todo), size, page)
        part = todo.iloc[start:stop]
        part = part.assign(row=gallery.rows_of_ids(ds.images, part["image_id"]), id=part["image_id"])

        def resolve(image_id: str, label: str) -> None:
            store.resolve(where, image_id, label, by=who)

        def undo(image_id: str) -> None:
            store.clear(where, image_id, CONSENSUS, note=f"undone by {who}")

        def caption(rec) -> str:
            done = f" → {rec['consensus']}" if isinstance(rec["consensus"], str) else ""
            return f"{a}: {rec['label_a']} · {b}: {rec['label_b']}{done}"

        def actions(rec, key) -> None:
            with st.container(horizontal=True):  # buttons wrap rather than cut their label
                for lab in labels:
                    st.button(lab, key=f"{key}-res-{lab}", on_click=resolve, args=(rec["image_id"], lab),
                              disabled=who is None, type="primary" if rec["consensus"] == lab else "secondary")
            if isinstance(rec["consensus"], str):
                st.button("Undo", key=f"{key}-undo", on_click=undo, args=(rec["image_id"],), disabled=who is None)

        ui.image_grid(ctx, part, key="ag", columns=4, caption=caption, actions=actions)
    ui.nav_link("expand", "Export the reviewed set (Expand, tab 4)", ctx, icon=":material/ios_share:")
