"""Blur scores: the MedGore EB colour evidence, per image and over the dataset."""

import io

import streamlit as st
from PIL import Image

from lib import charts, gallery, safety, ui

ctx = ui.setup("Blur scores", ":material/palette:")
st.title("Blur scores (EB)")
st.caption("EB = max(z_blood, z_skin): the share of blood-like (HSV red) and skin-like (YCbCr box) pixels, "
           "z-scored over this dataset. Images above the sidebar's EB cut are flagged; EB never clears an image "
           "(in a collection of wounds, only the reddest sixth stands a deviation above its own mean).")

with ui.guard():
    ds = ctx.require_dataset()
    images = ds.images
    eb = ctx.eb()
    has_split = eb["split"].notna().any()

    n_bad = int(eb["eb"].isna().sum())
    if n_bad:
        st.warning(f"{gallery.plural(n_bad, 'image')} could not be scored (they are censored).")
    st.plotly_chart(charts.distinct_colours(charts.eb_histograms(
        eb, by="label", facet="split" if has_split else None, cut=ctx.eb_threshold)), width="stretch")

    st.subheader("Blood-like vs skin-like fraction")
    st.caption("Click a point (or draw a box / lasso) to inspect the image; a selection can be opened in the gallery.")
    scatter = charts.blood_skin_scatter(eb.assign(eb=eb["eb"].round(3)), color="label",
                                        hover_data=["eb", "split"] if has_split else ["eb"])
    event = st.plotly_chart(charts.distinct_colours(scatter), on_select="rerun", selection_mode=("points", "box", "lasso"), key="eb-scatter",
                            width="stretch")
    picked = charts.selected_ids(event)
    if picked:
        ui.selection_bar(ctx, picked, "Blur scores", f"**{gallery.plural(len(picked), 'image')} selected.**")
        if st.session_state.get("eb-picked") != picked[0]:
            st.session_state["eb-picked"] = picked[0]
            ui.set_page_param("id", picked[0])

    st.subheader("One image")
    ids = set(images["id"])
    qid = ui.page_param("id")
    if qid not in ids:  # none, or not an image of this dataset: the highest EB, and the URL says so
        qid = str(eb.sort_values("eb", ascending=False, na_position="last")["id"].iloc[0])
        ui.set_page_param("id", qid)
    row = int(gallery.rows_of_ids(images, [qid])[0])
    rec = images.iloc[row]
    e = eb.iloc[row]
    m = st.columns(4)
    m[0].metric("EB", f"{e['eb']:+.2f}" if e["eb"] == e["eb"] else "n/a")
    m[1].metric("blood-like", f"{e['blood']:.1%}" if e["blood"] == e["blood"] else "n/a")
    m[2].metric("skin-like", f"{e['skin']:.1%}" if e["skin"] == e["skin"] else "n/a")
    m[3].metric("label", rec["label"] if isinstance(rec["label"], str) else "(none)")
    evidence = gallery.colour_evidence(ds, row)
    blood, skin, truth = evidence["blood"], evidence["skin"], evidence["truth"]
    shown_bytes, mode = ui.image_bytes(ctx, row)
    hide = ctx.censor if mode != "raw" else None  # masks trace the image: censored with it
    shown = Image.open(io.BytesIO(shown_bytes)).convert("RGB")
    c1, c2, c3 = st.columns(3)
    with c1:
        st.markdown("**Image**")
        ui.show_image(ctx, row, key="eb-one", caption=f"{ui.short(qid)} · {rec['path']}")
    with c2:
        st.markdown("**Colour masks** (red: blood-like, blue: skin-like)")
        overlay = gallery.mask_overlay(shown, blood, skin)
        # The masks trace the sharp image (a skin mask is a silhouette): censored with it.
        st.image(gallery.jpeg_bytes(overlay if hide is None else safety.render(overlay, hide)), width="stretch",
                 caption="over the sharp thumbnail" if mode == "raw" else "censored with the image: reveal it to "
                                                                          "see the masks")
    with c3:
        st.markdown("**Censoring preview** (only inside a mask)")
        region = st.radio("Region", ["blood-like", "skin-like", "both"] + (["ground truth"] if truth is not None
                                                                             else []),
                          horizontal=True, key="eb-region")
        how = st.radio("Rendering", list(safety.MODES), horizontal=True, key="eb-how")
        if mode != "raw":
            st.info("Region censoring leaves the rest of the image sharp: reveal the image first to preview it.")
        else:
            mask = {"blood-like": blood, "skin-like": skin, "both": blood | skin, "ground truth": truth}[region]
            st.image(gallery.jpeg_bytes(safety.censor_regions(shown, mask=safety.clean_mask(mask), mode=how)),
                     width="stretch")

    if truth is not None:
        st.subheader("Against the ground-truth masks")
        g1, g2 = st.columns([1, 2])
        g1.metric("IoU (cleaned blood-like mask vs truth)", f"{evidence['iou']:.3f}")
        truth_img = gallery.mask_image(truth)
        g1.image(gallery.jpeg_bytes(truth_img if hide is None else safety.render(truth_img, hide)), width=200,
                 caption="ground-truth mask" + ("" if mode == "raw" else " (censored with the image)"))
        with g2:
            n_masks = int(images["mask"].notna().sum())
            if st.button(f"IoU over all {gallery.plural(n_masks, 'image')} with a mask", key="eb-iou-all"):
                st.session_state["eb-iou"] = ctx.name
            if st.session_state.get("eb-iou") == ctx.name:
                ious = ui.mask_ious(ctx.name)
                ok = ious.dropna(subset=["iou"])
                st.markdown(f"mean IoU **{ok['iou'].mean():.3f}**, median {ok['iou'].median():.3f} over "
                            f"{gallery.plural(len(ok), 'image')} ({len(ious) - len(ok)} unreadable)")
                by = "source" if "source" in images else "label"
                ok = ok.assign(**{by: images[by].to_numpy()[ok["row"].to_numpy()]})
                st.plotly_chart(charts.iou_box(ok, by), width="stretch")
