"""Retrieval: search the dataset by text or by image; Recall@K on (image, caption) pairs."""

import streamlit as st

from lib import charts, gallery, ui
from lib.errors import WorkbenchError
from lib.retrieval import image_to_image, text_to_image

ctx = ui.setup("Retrieval", ":material/search:")
st.title("Retrieval")

with ui.guard():
    ds = ctx.require_dataset()
    space = ctx.require_space()
    images = ds.images
    st.caption(f"Model: `{ctx.model.label}` (change it in the sidebar).")

    def caption(rec) -> str:
        lab = rec["label"] if isinstance(rec["label"], str) else "(no label)"
        return f"#{rec['rank']} · {rec['score']:.3f} · {lab}"

    def actions(rec, key) -> None:
        ui.nav_link("neighbours", "Neighbours", ctx, icon=":material/hub:", id=rec["id"])

    t_text, t_image, t_eval = st.tabs(["Text → image", "Image → image", "Recall@K on captions"])
    with t_text:
        if ctx.require_text(ctx.model, "Text search", stop=False):
            with st.form("rt-text", border=False):
                c1, c2 = st.columns([4, 1])
                query = c1.text_input("Text query", placeholder="a photo of an open wound", key="rt-q")
                k = c2.number_input("k", 1, 200, 24, key="rt-k")
                go = st.form_submit_button("Search", type="primary", icon=":material/search:")
            if go and query.strip():
                st.session_state["rt-last"] = (ctx.name, ctx.model.key, query.strip(), int(k))
            last = st.session_state.get("rt-last")
            if last and last[:2] == (ctx.name, ctx.model.key):
                res = text_to_image(space, ui.load_backend(ctx.model), last[2], last[3])
                st.markdown(f"**{gallery.plural(len(res), 'result')} for** “{last[2]}”")
                ui.image_grid(ctx, res, key="rt-t", columns=6, caption=caption, actions=actions)

    with t_image:
        c1, c2, c3 = st.columns([2, 2, 1])
        prefix = c1.text_input("Image id (or a unique prefix)", key="ri-prefix")
        upload = c2.file_uploader("…or upload an image", key="ri-upload",
                                  type=["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif", "dcm"])
        k = c3.number_input("k", 1, 200, 24, key="ri-k")
        res, qcol = None, st.columns([1, 5])
        if upload is not None:
            img = gallery.decode_upload(upload.getvalue(), upload.name)
            with qcol[0]:
                ui.show_upload(ctx, img, key="ri-query", caption=upload.name)
            res = image_to_image(space, ui.load_backend(ctx.model), img, int(k))
        elif prefix.strip():
            try:
                row = space.row_of(ds.resolve_id(prefix))
            except WorkbenchError as e:
                st.error(str(e))
            else:
                with qcol[0]:
                    ui.show_image(ctx, row, key="ri-query", caption="query")
                res = image_to_image(space, None, row, int(k))
        else:
            st.caption("Give an image id or upload an image.")
        if res is not None:
            with qcol[1]:
                ui.image_grid(ctx, res, key="rt-i", columns=5, caption=caption, actions=actions)

    with t_eval:
        if ctx.require_text(ctx.model, "Caption retrieval evaluation", stop=False):
            has_caption = "caption" in images and images["caption"].notna().any()
            if not has_caption:
                st.info(f"Dataset `{ctx.name}` has no captions. Add a `caption` column to its manifest and ingest "
                        f"again: `{ui.CLI} ingest /path/to/manifest.csv --name {ctx.name}`.")
            else:
                groups = ["(none)"] + [c for c in images.columns if c not in (
                    "id", "path", "caption", "width", "height", "duplicate_of", "mask")]
                g = st.selectbox("Also per value of", groups, key="re-group")
                if st.button("Evaluate", type="primary", key="re-go"):
                    st.session_state["re-last"] = (ctx.name, ctx.model.key, None if g == "(none)" else g)
                last = st.session_state.get("re-last")
                if last and last[:2] == (ctx.name, ctx.model.key):
                    ev = ui.retrieval_eval(ctx.name, ctx.model, last[2])
                    st.markdown(f"**{gallery.plural(ev.pairs, '(image, caption) pair')}**, "
                                f"{gallery.plural(ev.skipped, 'row')} without a caption; "
                                "gallery pooled over all pairs.")
                    st.plotly_chart(charts.recall_bars(ev.table), width="stretch")
                    st.dataframe(ev.table, hide_index=True, width="stretch")
