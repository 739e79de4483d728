"""Image: one image in detail, through the safe view: where it is, every piece of safe-view
evidence with what it says, its reviews and their history, copies, neighbours, its point on a map."""

import streamlit as st

from lib import charts, evidence, gallery, ui
from lib.errors import WorkbenchError

ctx = ui.setup("Image", ":material/info:")
st.title("Image")

with ui.guard():
    ds = ctx.require_dataset()
    images = ds.images
    with st.form("im-find", border=False):
        f1, f2 = st.columns([3, 1])
        query = f1.text_input("Image id prefix, or part of its file name or path", placeholder="e.g. 0012.png")
        if f2.form_submit_button("Open") and query.strip():
            try:
                ui.set_page_param("id", gallery.find_image(images, query))
            except WorkbenchError as e:
                st.error(str(e))
    cid = ui.page_param("id")
    row = ds.row_of(cid)
    if row is None:
        st.info("Open an image from any thumbnail (its **Details** link) or a map point, or find one above.")
        st.stop()
    rec = images.iloc[row]
    store = ui.annotation_store()

    left, right = st.columns([2, 3])
    with left:
        ui.show_image(ctx, row, key="im", side=512, caption=gallery.file_name(rec["path"], 60), details=False)
        st.markdown(f"`{rec['path']}`")
        st.caption(f"id `{cid}` · root `{ds.root}`")
        l1, l2 = st.columns(2)
        with l1:
            ui.nav_link("neighbours", "Neighbours", ctx, icon=":material/hub:", id=cid)
        with l2:
            ui.nav_link("map", "On the map", ctx, icon=":material/scatter_plot:", id=cid)
    with right:
        censored, reason = ctx.censored_at(row)
        st.markdown(f"**Safe view:** {'censored' if censored else 'shown raw'}: {reason}")
        policy, _ = ctx.policy()
        ev = evidence.image_evidence(cid, label=rec["label"], policy=policy, eb=ctx.eb(),
                                     eb_threshold=ctx.eb_threshold, nudity=ui.nudity_table(ctx.name),
                                     screening=ctx.screening(), labels=store.image_labels(ctx.name, cid),
                                     schemas={s.name: s for s in store.schemas(ctx.name)})
        st.dataframe(ev, hide_index=True, width="stretch")
        st.markdown("**Metadata**")
        st.dataframe(gallery.metadata_table(rec), hide_index=True, width="stretch")

    t1, t2, t3 = st.tabs(["Reviews and history", "Copies", "Neighbours and map"])
    with t1:
        hist = store.image_labels(ctx.name, cid, history=True)
        if len(hist):
            st.dataframe(hist[["label_set", "annotator", "label", "task", "created_at", "note"]]
                         .fillna({"label": "(cleared)", "note": ""}), hide_index=True, width="stretch")
        else:
            st.caption("Nobody has labelled this image yet.")
        ui.nav_link("annotate", "Label it on the Annotate page", ctx, icon=":material/edit_note:")
    with t2:
        copies = images[(images["id"] == cid)]
        st.markdown(f"**Byte-identical copies in this dataset:** {len(copies) - 1}")
        if len(copies) > 1:
            st.dataframe(copies[["path", "label"]], hide_index=True, width="stretch")
        if st.button("Find near-duplicates (perceptual hash, flips and rotations)", key="im-nd"):
            st.session_state["im-nd"] = cid
        if st.session_state.get("im-nd") == cid:
            near = ui.near_duplicates_of_image(ctx.name, cid)
            if near.empty:
                st.caption("No near-duplicate in this dataset.")
            else:
                ui.image_grid(ctx, near, key="im-near", columns=6, caption=lambda r: gallery.file_name(r["path"]))
    with t3:
        if ctx.is_embedded(ctx.model):
            from lib.neighbors import neighbours

            nb = neighbours(ui.load_space(ctx.name, ctx.model), row, 6)
            ui.image_grid(ctx, nb, key="im-nb", columns=6,
                          caption=lambda r: f"#{r['rank']} · {r['score']:.3f} · {gallery.file_name(r['path'], 24)}")
            pts = ui.projection(ctx.name, ctx.model, "pca")
            st.plotly_chart(charts.linked_map(pts, "label", highlight=cid, title=f"{ctx.model.label} (PCA)"),
                            key="im-map", width="stretch")
        else:
            st.caption(f"Embed the dataset to see neighbours and the map: `{ctx.embed_command(ctx.model)}`")
