"""Annotate: label images one at a time from the keyboard, straight into the annotation store."""

import streamlit as st

from lib import detector as det_mod
from lib import expansion as ex
from lib import gallery, ui
from lib import workflow as wf
from lib.annotations import scope
from lib.errors import WorkbenchError

ctx = ui.setup("Annotate", ":material/edit_note:")
st.title("Annotate")
ss = st.session_state

ORDER_NAMES = {"eb_desc": "EB score, high first", "eb_asc": "EB score, low first", "random": "random",
               "dataset": "dataset order"}

with ui.guard():
    ds = ctx.require_dataset()
    store = ui.annotation_store()
    who = ui.annotator_name()
    if who is None:
        st.info("**Type your annotator name in the sidebar** (once per session): every label is stored under it, "
                "so two annotators can label the same images and be compared on the Agreement page.")
        st.stop()
    schemas = {s.name: s for s in store.schemas(ctx.name)}
    l1, l2 = st.columns([2, 3])
    set_name = l1.selectbox("Label set", list(schemas), key="an-set", format_func=ui.label_set_name,
                            help="safety: MedGore's Blur / Maybe / Ok, the safe view's reviews. Other sets (wound "
                                 "types, tags...) keep their own labels beside it; their values may flag or clear an "
                                 "image too.")
    with l2.expander("Add a label set"):
        ui.label_set_form(ctx.name, store)
    schema = schemas[set_name]
    where = scope(ctx.name, schema.name)
    labels = list(schema.values)

    sent = ui.sent_review(ctx.name)
    if sent and ss.get("an-sent") != sent:  # just sent from the Expand page: open it
        ss["an-sent"] = sent
        ss["an-kind"] = "Review sample"
        ss["an-exp"] = sent["expansion"]
        ss["an-file"] = sent["file"]
    if ss.pop("an-from-selection", None) or (ui.selection(ctx.name) and ss.get("an-kind") is None):
        ss["an-kind"] = "Selection"
    kind = st.radio("Queue", ["Seeds to pick", "Not yet screened", "Selection", "Review sample",
                              "Suggested by a detector", "Quality review"],
                    horizontal=True, key="an-kind",
                    help="Seeds: images to label by hand (the start of an expansion). Not yet screened: the images "
                         "the safe view has no evidence about; an Ok clears one, Blur or Maybe flags it. Review "
                         "sample: neighbours drawn per band of ranks on the Expand page, labelled blind by two "
                         "annotators. Suggested by a detector: the images that teach a detector most (unfamiliar "
                         "regions first, then uncertain ones near its threshold, then diverse ones); retrain it "
                         "after a batch. Quality review: images sent from the Quality page (likely label "
                         "mistakes).")

    if kind in ("Seeds to pick", "Not yet screened", "Selection"):
        decision = ctx.decision()
        unscreened = decision.loc[decision["status"] == "not yet screened", "id"] \
            if kind == "Not yet screened" else None
        if unscreened is not None:
            st.caption(f"{gallery.plural(unscreened.nunique(), 'distinct image')} not yet screened in `{ctx.name}`.")
        if kind == "Selection":
            sel = ui.selection(ctx.name)
            if not sel:
                st.info("**No selection yet.** Tick images in the Gallery (or draw a lasso on a map) and press "
                        "*Review*.")
                ui.nav_link("gallery", "Open the Gallery", ctx, icon=":material/grid_view:")
                st.stop()
            unscreened = sel["ids"]
            st.caption(f"{gallery.plural(len(sel['ids']), 'image')} selected on *{sel['source']}*.")
        c = st.columns([3, 2, 1, 2, 2])
        opts = sorted(ds.images["label"].dropna().astype(str).unique()) + ["(none)"] if ds.has_labels else []
        chosen = c[0].multiselect("Dataset label", opts, key="an-labels", placeholder="all",
                                  disabled=not opts, help="Only images with these dataset labels.")
        order = c[1].selectbox("Order", list(ORDER_NAMES), format_func=ORDER_NAMES.get, key="an-order",
                               help="EB, high first, brings likely sensitive images to the front.")
        size = int(c[2].number_input("Queue size", 5, 2000, 50, step=5, key="an-size"))
        skip = c[3].toggle("Skip my labelled", True, key="an-skip")
        if c[4].button("New queue", key="an-new", help="Draw the queue again (leaves out what you labelled)"):
            ss["an-gen"] = ss.get("an-gen", 0) + 1
        signature = (kind, ctx.name, where, who, tuple(chosen), order, size, skip, ss.get("an-gen", 0),
                     tuple(unscreened) if kind == "Selection" else None)
        if ss.get("an-sig") != signature:
            eb = ctx.eb() if order.startswith("eb") else None
            ss["an-queue"] = wf.seed_queue(ds, store=store, annotator=who, labels=chosen or None, eb=eb,
                                           order=order, limit=size, skip_labelled=skip, seed=ss.get("an-gen", 0),
                                           ids=unscreened, task={"Seeds to pick": "seed", "Selection": "selection"}
                                           .get(kind, "screen"), label_scope=where)
            ss["an-sig"], ss["an-pos"] = signature, 0
        queue_name = {"Seeds to pick": "seeds", "Selection": "selection"}.get(kind, "not-yet-screened")
    elif kind == "Suggested by a detector":
        det_names = ui.detector_names()
        if not det_names:
            st.info("**No detector yet.** Train one on the Screen page (or `python -m lib train`).")
            ui.nav_link("screen", "Open Screen", ctx, icon=":material/shield:")
            st.stop()
        c = st.columns([3, 1, 1])
        det_name = c[0].selectbox("Detector", det_names, key="an-det")
        size = int(c[1].number_input("Suggestions", 5, 500, 20, step=5, key="an-dsize"))
        if c[2].button("New suggestions", key="an-dnew", help="Suggest again (leaves out what was reviewed)"):
            ss["an-dgen"] = ss.get("an-dgen", 0) + 1
        det = ui.load_detector(det_name)
        ui.retrain_panel(ctx, det_name, store)
        signature = ("suggest", ctx.name, det_name, det.meta.get("created"), size, ss.get("an-dgen", 0))
        if ss.get("an-sig") != signature:
            bar = st.progress(0.0, text="Choosing what to label next")
            ss["an-queue"] = det_mod.suggest_queue(det_mod.suggest(
                ctx.name, det, size, store=store, progress=ui.progress_callback(bar, "Flips and rotations")))
            bar.empty()
            ss["an-sig"], ss["an-pos"] = signature, 0
        queue_name = f"suggested:{det_name}"
    elif kind == "Quality review":
        from lib import quality

        review_file = quality.review_list_path(ctx.name)
        if not review_file.exists():
            st.info("**Nothing sent for review yet.** On the Quality page, *Send to review* queues a likely label "
                    "mistake here.")
            ui.nav_link("quality", "Open Quality", ctx, icon=":material/fact_check:")
            st.stop()
        signature = ("quality", ctx.name, review_file.stat().st_mtime_ns)
        if ss.get("an-sig") != signature:
            ss["an-queue"] = quality.review_queue(ds)
            ss["an-sig"] = signature
            ss["an-pos"] = wf.next_unlabelled(ss["an-queue"]["id"].tolist(),
                                              store.current(where, who)["image_id"]) or 0
        queue_name = "quality-review"
    else:
        exps = ex.list_expansions(ctx.name)
        if exps.empty:
            st.info("**No expansion yet.** Run one on the Expand page, build a review sample there and send it here.")
            ui.nav_link("expand", "Open Expand", ctx, icon=":material/account_tree:")
            st.stop()
        names = exps["name"].tolist()
        if ss.get("an-exp") not in names:
            ss["an-exp"] = names[0]
        c1, c2 = st.columns(2)
        exp_name = c1.selectbox("Expansion", names, key="an-exp")
        saved = ui.load_expansion(ctx.name, exp_name)
        files = [p.name for p in wf.list_review_samples(saved)]
        if not files:
            st.info(f"**Expansion `{exp_name}` has no review sample yet.** Build one on the Expand page.")
            ui.nav_link("expand", "Open Expand", ctx, icon=":material/account_tree:")
            st.stop()
        if ss.get("an-file") not in files:
            ss["an-file"] = files[0]
        file_name = c2.selectbox("Review sample", files, key="an-file")
        path = saved.path / file_name
        signature = ("review", ctx.name, exp_name, file_name, path.stat().st_mtime_ns)
        if ss.get("an-sig") != signature:
            ss["an-queue"] = wf.review_queue(wf.load_review_sample(path), ds)
            ss["an-sig"] = signature
            ss["an-pos"] = wf.next_unlabelled(ss["an-queue"]["id"].tolist(),
                                              store.current(where, who)["image_id"]) or 0
        queue_name = f"review:{exp_name}/{file_name}"

    queue = ss["an-queue"]
    if queue.empty:
        st.success("Nothing left to label here: change the filters, or untick *Skip my labelled*.")
        st.stop()
    ids = queue["id"].tolist()
    mine = store.current(where, who, columns=("image_id", "label"), image_ids=ids)  # the queue's only
    my_labels = dict(zip(mine["image_id"], mine["label"], strict=True))
    done, left = store.progress(where, who, ids)
    pos = min(max(int(ss.get("an-pos", 0)), 0), len(ids) - 1)
    ss["an-pos"] = pos
    rec = queue.iloc[pos]
    cid = str(rec["id"])

    def give(label) -> None:
        try:
            store.set_label(where, cid, who, label, task=str(rec["task"]),
                            context=wf.label_context(rec.to_dict(), queue_name))
        except WorkbenchError as e:
            ss["an-error"] = str(e)
            return
        nxt = wf.next_unlabelled(ids, set(my_labels) | {cid}, pos + 1)
        ss["an-pos"] = pos if nxt is None else nxt

    def clear() -> None:
        store.clear(where, cid, who)

    def toggle_tag(tag: str) -> None:
        tags = ss.setdefault("an-tags", {}).setdefault(cid, set(str(my_labels.get(cid) or "").split("|")) - {""})
        tags.symmetric_difference_update({tag})

    def save_tags() -> None:
        tags = ss.get("an-tags", {}).pop(cid, None)
        if tags:
            give(sorted(tags))

    def move(step: int) -> None:
        ss["an-pos"] = (pos + step) % len(ids)

    def reveal_key() -> None:  # V: ask first; V again (or the button) shows it; once shown, V re-blurs
        if cid in ui.revealed():
            ui.revealed().pop(cid, None)
            ss.pop("an-confirm", None)
        elif ss.get("an-confirm") == cid:
            ui.revealed()[cid] = "full"
            ss.pop("an-confirm", None)
        else:
            ss["an-confirm"] = cid

    if ss.get("an-error"):
        st.error(ss.pop("an-error"))
    st.progress(done / len(ids), text=f"**{done} done · {left} left** of {len(ids)} in this queue")

    left_col, right_col = st.columns([3, 2])
    censored, reason = ctx.censored_at(int(rec["row"]))
    with left_col:
        data, mode = ui.image_bytes(ctx, int(rec["row"]), side=512)
        name = gallery.file_name(ds.images["path"].iat[int(rec["row"])], 48)
        st.image(data, width=512, alt=f"image {cid[:16]}",
                 caption=f"#{pos + 1} of {len(ids)} · {name}" + (" · censored" if mode != "raw" else ""))
        st.caption(ui.reason_line(censored, reason))
        if ctx.safe_view and censored:
            if ss.get("an-confirm") == cid and cid not in ui.revealed():
                st.warning(f"**This image is censored:** {reason}. Press **V** again (or the button) to show it "
                           "unblurred, in this session only.", icon=":material/warning:")
                b1, b2 = st.columns(2)
                b1.button("Show the full image", key="an-reveal", shortcut="V", on_click=reveal_key, type="primary")
                b2.button("Cancel", key="an-cancel", on_click=lambda: ss.pop("an-confirm", None))
            else:
                st.button("Re-blur" if cid in ui.revealed() else "Reveal", key="an-reveal", shortcut="V",
                          on_click=reveal_key, icon=":material/visibility:",
                          help="Reveal this one image (after a warning naming why it is censored), or re-blur it")
        if rec["task"] != "review":  # the detail view shows other annotators' labels: a review stays blind
            ui.details_link(ctx, cid)
    with right_col:
        current = my_labels.get(cid)
        st.markdown(f"**{who}**, your {'tags' if schema.multi else 'label'} ({schema.name}): "
                    f"**{(current or '—').replace('|', ', ')}**")
        keyed = dict(zip(labels, schema.keys, strict=False))
        if schema.multi:
            pending = ss.get("an-tags", {}).get(cid, set(str(current or "").split("|")) - {""})
            for i, lab in enumerate(labels):
                st.button(lab, key=f"an-lab-{i}", shortcut=keyed.get(lab), on_click=toggle_tag, args=(lab,),
                          width="stretch", type="primary" if lab in pending else "secondary")
            st.button("Save tags", key="an-save-tags", shortcut="Enter", on_click=save_tags, disabled=not pending,
                      icon=":material/check:", width="stretch")
        else:
            for i, lab in enumerate(labels):
                st.button(lab, key=f"an-lab-{i}", shortcut=keyed.get(lab), on_click=give, args=(lab,),
                          width="stretch", type="primary" if lab == current else "secondary")
        p, n = st.columns(2)
        p.button("Previous", key="an-prev", shortcut="P", on_click=move, args=(-1,), width="stretch",
                 icon=":material/arrow_back:")
        n.button("Next", key="an-next", shortcut="N", on_click=move, args=(1,), width="stretch",
                 icon=":material/arrow_forward:")
        if current is not None:
            st.button("Clear my label", key="an-clear", on_click=clear, icon=":material/backspace:")
        keys = " · ".join(f"**{k.upper()}** {lab}" for lab, k in keyed.items())
        st.caption(f"Keys: {keys} · **N** next · **P** previous · **V** reveal / hide. "
                   + ("Tags toggle; **Enter** stores them and the next image follows." if schema.multi else
                      "A label is stored at once and the next unlabelled image follows."))
        if rec["task"] == "review":
            st.caption("Review: judge the image itself; its seed and rank stay hidden so the review is blind.")
        if rec["task"] == "suggest":
            st.caption(f"Suggested (**{rec['why']}**): {det_mod.WHY.get(rec['why'], '')}.")

    def jump() -> None:
        picked = ss[table_key].selection.rows
        if picked:
            ss["an-pos"] = int(picked[0])

    table_key = f"an-queue-{abs(hash(ss['an-sig']))}"  # a new queue starts unselected
    with st.expander(f"The queue ({gallery.plural(len(ids), 'image')}): click a row to open it"):
        st.dataframe(ui.queue_table(ctx, queue, my_labels, pos), hide_index=True, width="stretch", height=320,
                     row_height=52, key=table_key, on_select=jump, selection_mode="single-row",
                     column_config={"image": st.column_config.ImageColumn("image", width="small",
                                                                          help="Through the safe view")})
