/* npcrepro static viewer: browse a run's images, ground truth and predictions without a kernel.
 *
 * Every <div class="npc-viewer" data-manifest="..."> on the page gets a viewer. The manifest (written
 * by npcrepro.viz.static_viewer.export) lists runs -> cases -> NIfTI layers, relative to itself; the
 * volumes are drawn by NiiVue (vendored ES module, WebGL2). Controls: run, case, image channel, plane
 * (axial / coronal / sagittal), slice, window and level, ground-truth structure, one checkbox per
 * prediction, opacity and filled / outline. The mouse wheel over the picture also moves through the slices.
 *
 * For tests and curious readers, each container carries data-state ("loading", "ready", "error"),
 * data-draws (incremented on every redraw) and data-slice ("<plane> <index>/<count>").
 */
import { Niivue, SLICE_TYPE } from "../vendor/niivue/niivue.js";

// plane -> [NiiVue slice type, axis of NiiVue's RAS fraction that the plane cuts]
const PLANES = {
  axial: [SLICE_TYPE.AXIAL, 2],
  coronal: [SLICE_TYPE.CORONAL, 1],
  sagittal: [SLICE_TYPE.SAGITTAL, 0],
};
const GT_COLOUR = "#ffe000";
const MAX_SHOWN = 4; // predictions shown at first; with more, only the first two

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function rgb(hex) {
  const n = parseInt(hex.replace("#", ""), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function labelled(text, control) {
  return el("label", { class: "npc-field" }, el("span", { text }), control);
}

function select(options, value) {
  const s = el("select");
  options.forEach(([v, t]) => s.append(el("option", { value: v, text: t })));
  if (value != null) s.value = value;
  return s;
}

class Viewer {
  constructor(root) {
    this.root = root;
    this.base = new URL(root.dataset.manifest, document.baseURI);
    this.state = { run: 0, case: 0, channel: null, plane: "axial", structure: null,
                   hidden: new Set(), opacity: 0.6, outline: false, level: 127.5, width: 255 };
    this.draws = 0;
    this.loadToken = 0;
  }

  status(state, text) {
    this.root.dataset.state = state;
    if (text != null) this.msg.textContent = text;
  }

  async start() {
    this.root.textContent = "";
    this.msg = el("div", { class: "npc-msg" });
    if (location.protocol === "file:") {
      this.root.append(this.msg);
      this.status("error", "The volume viewer reads its NIfTI files over HTTP; serve the book " +
        "(e.g. python -m http.server -d _build/html) instead of opening it as a file.");
      return;
    }
    const resp = await fetch(this.base);
    if (!resp.ok) throw new Error(`manifest ${this.base}: HTTP ${resp.status}`);
    this.manifest = await resp.json();
    this.build();
    this.nv = new Niivue({
      backColor: [0, 0, 0, 1], crosshairWidth: 0, show3Dcrosshair: false, isColorbar: false,
      isOrientCube: false, dragAndDropEnabled: false, logLevel: "error", loadingText: "loading ...",
      isRadiologicalConvention: true, // patient's right on the left, as the live explorer draws it
    });
    await this.nv.attachToCanvas(this.canvas);
    this.nv.setInterpolation(true); // nearest neighbour: voxels and mask edges as they are
    this.nv.onLocationChange = () => this.syncSlider();
    await this.selectRun(0);
  }

  build() {
    const runs = this.manifest.runs;
    this.runSel = select(runs.map((r, i) => [i, r.label]), 0);
    this.caseSel = el("select");
    this.chanSel = el("select");
    this.planeSel = select(Object.keys(PLANES).map((p) => [p, p]), "axial");
    this.slider = el("input", { type: "range", min: 0, max: 0, step: 1, value: 0, class: "npc-slice",
                                "aria-label": "slice" });
    this.sliceText = el("span", { class: "npc-slice-text" });
    this.gtSel = el("select", { class: "npc-gt" });
    this.opacity = el("input", { type: "range", min: 0, max: 1, step: 0.05, value: this.state.opacity,
                                 class: "npc-opacity", "aria-label": "opacity" });
    // window and level on the exported 8-bit scale (0-255 spans the channel's export window); the text
    // beside them gives the image's own units
    this.level = el("input", { type: "range", min: 0, max: 255, step: 1, value: this.state.level,
                               class: "npc-level", "aria-label": "level" });
    this.width = el("input", { type: "range", min: 2, max: 255, step: 1, value: this.state.width,
                               class: "npc-width", "aria-label": "window width" });
    this.wlText = el("span", { class: "npc-wl-text" });
    this.outline = el("input", { type: "checkbox", class: "npc-outline" });
    this.preds = el("div", { class: "npc-preds" });
    this.note = el("div", { class: "npc-note" });
    this.canvas = el("canvas", { class: "npc-canvas" });
    const row = (...c) => el("div", { class: "npc-row" }, ...c);
    this.root.append(
      el("style", { text: CSS }),
      row(labelled("Run", this.runSel), labelled("Case", this.caseSel)),
      row(labelled("Image", this.chanSel), labelled("Plane", this.planeSel),
          labelled("Slice", this.slider), this.sliceText),
      row(labelled("Level", this.level), labelled("Window", this.width), this.wlText),
      row(labelled("Ground truth", this.gtSel), labelled("Opacity", this.opacity),
          labelled("Outline", this.outline)),
      this.preds,
      el("div", { class: "npc-canvas-box" }, this.canvas),
      this.note, this.msg,
    );
    this.runSel.addEventListener("change", () => this.selectRun(+this.runSel.value));
    this.caseSel.addEventListener("change", () => this.selectCase(+this.caseSel.value));
    this.chanSel.addEventListener("change", () => { this.state.channel = this.chanSel.value; this.load(); });
    this.planeSel.addEventListener("change", () => this.setPlane(this.planeSel.value));
    this.slider.addEventListener("input", () => this.setSlice(+this.slider.value));
    this.gtSel.addEventListener("change", () => { this.state.structure = this.gtSel.value || null; this.paint(); });
    this.opacity.addEventListener("input", () => { this.state.opacity = +this.opacity.value; this.paint(); });
    this.outline.addEventListener("change", () => { this.state.outline = this.outline.checked; this.paint(); });
    this.level.addEventListener("input", () => { this.state.level = +this.level.value; this.applyWindow(); });
    this.width.addEventListener("input", () => { this.state.width = +this.width.value; this.applyWindow(); });
  }

  channel() {
    return this.case.channels.find((x) => x.name === this.state.channel) || this.case.channels[0];
  }

  windowRange() {
    const { level, width } = this.state;
    return [level - width / 2, level + width / 2];
  }

  showWindow() {
    // in the channel's units: 0-255 maps linearly onto its export window [lo, hi]
    const w = this.channel().window;
    const [a, b] = this.windowRange();
    if (!w) { this.wlText.textContent = ""; return; }
    const real = (v) => w[0] + (v / 255) * (w[1] - w[0]);
    const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
    this.wlText.textContent = `${fmt(real(a))} to ${fmt(real(b))} (level ${fmt(real(this.state.level))}, ` +
      `width ${fmt(real(b) - real(a))})`;
  }

  applyWindow() {
    this.showWindow();
    if (!this.nv || !this.nv.volumes.length) return;
    const [a, b] = this.windowRange();
    this.nv.volumes[0].cal_min = a;
    this.nv.volumes[0].cal_max = b;
    this.nv.updateGLVolume();
    this.redraw();
  }

  get run() { return this.manifest.runs[this.state.run]; }
  get case() { return this.run.cases[this.state.case]; }

  async selectRun(i) {
    this.state.run = i;
    this.runSel.value = String(i);
    this.caseSel.textContent = "";
    this.run.cases.forEach((c, k) => this.caseSel.append(el("option", { value: k, text: c.name })));
    // many overlays at once hide the image: show the first few, the rest one click away
    const labels = this.run.cases.length ? this.run.cases[0].predictions.map((p) => p.label) : [];
    this.state.hidden = new Set(labels.length > MAX_SHOWN ? labels.slice(2) : []);
    await this.selectCase(0);
  }

  async selectCase(k) {
    const c = this.run.cases[k];
    this.state.case = k;
    this.caseSel.value = String(k);
    this.chanSel.textContent = "";
    c.channels.forEach((ch) => this.chanSel.append(el("option", { value: ch.name, text: ch.name })));
    if (!c.channels.some((ch) => ch.name === this.state.channel)) this.state.channel = c.default_channel;
    this.chanSel.value = this.state.channel;
    this.gtSel.textContent = "";
    this.gtSel.append(el("option", { value: "", text: "(none)" }));
    c.structures.forEach((s) => this.gtSel.append(el("option", { value: s.name, text: s.name })));
    if (!c.structures.some((s) => s.name === this.state.structure)) this.state.structure = c.default_structure;
    this.gtSel.value = this.state.structure || "";
    this.planeSel.disabled = c.is_2d;
    if (c.is_2d) { this.state.plane = "axial"; this.planeSel.value = "axial"; }
    this.buildPredictions(c);
    this.note.textContent = `${this.run.description || this.run.label} · ${c.name} · ` +
      `${c.shape.join(" x ")} voxels (z, y, x), spacing ${c.spacing.map((s) => +s.toFixed(2)).join(" x ")} mm`;
    this.focus = c.focus_ras;
    await this.load();
  }

  buildPredictions(c) {
    this.preds.textContent = "";
    if (!c.predictions.length) {
      this.preds.append(el("span", { class: "npc-none", text: "no predictions in this run: images and ground truth only" }));
      return;
    }
    this.preds.append(el("span", { class: "npc-preds-title", text: "Predictions" }));
    const all = (on) => () => {
      c.predictions.forEach((p) => (on ? this.state.hidden.delete(p.label) : this.state.hidden.add(p.label)));
      this.preds.querySelectorAll("input.npc-pred").forEach((b) => { b.checked = on; });
      this.paint();
    };
    const button = (text, fn) => { const b = el("button", { type: "button", class: "npc-all", text }); b.addEventListener("click", fn); return b; };
    this.preds.append(button("all", all(true)), button("none", all(false)));
    c.predictions.forEach((p, i) => {
      const box = el("input", { type: "checkbox", "data-label": p.label, class: "npc-pred" });
      box.checked = !this.state.hidden.has(p.label);
      box.addEventListener("change", () => {
        if (box.checked) this.state.hidden.delete(p.label); else this.state.hidden.add(p.label);
        this.paint();
      });
      const extra = [p.dsc != null ? `DSC ${p.dsc.toFixed(2)}` : null, p.note || null].filter(Boolean).join("; ");
      this.preds.append(el("label", { class: "npc-pred-item", title: p.note || "" }, box,
        el("span", { class: "npc-swatch", style: `background:${p.colour}` }),
        el("span", { text: p.label + (extra ? ` (${extra})` : "") })));
    });
  }

  colormap(hex) {
    const key = "npc" + hex.replace("#", "");
    if (!this.nv.colormaps().includes(key)) {
      const [r, g, b] = rgb(hex);
      this.nv.addColormap(key, { R: [0, r], G: [0, g], B: [0, b], A: [0, 255], I: [0, 255] });
    }
    return key;
  }

  async load() {
    const c = this.case;
    const token = ++this.loadToken;
    this.status("loading", "loading ...");
    const ch = this.channel();
    const url = (u) => new URL(u, this.base).href;
    this.layers = [{ kind: "image" }];
    const [lo, hi] = this.windowRange();
    const vols = [{ url: url(ch.url), name: `${ch.name}.nii.gz`, colormap: "gray", cal_min: lo, cal_max: hi }];
    c.structures.forEach((s) => {
      this.layers.push({ kind: "gt", name: s.name });
      vols.push({ url: url(s.url), name: `gt-${s.name}.nii.gz`, colormap: this.colormap(GT_COLOUR),
                  cal_min: 0, cal_max: 1, opacity: 0 });
    });
    c.predictions.forEach((p) => {
      this.layers.push({ kind: "pred", name: p.label });
      vols.push({ url: url(p.url), name: `pred-${p.label}.nii.gz`, colormap: this.colormap(p.colour),
                  cal_min: 0, cal_max: 1, opacity: 0 });
    });
    try {
      await this.nv.loadVolumes(vols);
    } catch (err) {
      this.status("error", `could not load ${c.name}: ${err}`);
      return;
    }
    if (token !== this.loadToken) return; // a newer choice is loading
    this.nv.setSliceType(PLANES[this.state.plane][0]);
    if (this.focus) this.nv.scene.crosshairPos = this.nv.mm2frac(this.focus);
    this.syncSlider();
    this.showWindow();
    this.paint();
    this.status("ready", "");
  }

  axisCount() {
    const axis = PLANES[this.state.plane][1];
    const vol = this.nv.volumes[0];
    return [axis, vol ? vol.dimsRAS[axis + 1] : 1];
  }

  syncSlider() {
    if (!this.nv || !this.nv.volumes.length) return;
    const [axis, n] = this.axisCount();
    const frac = this.nv.scene.crosshairPos;
    const s = Math.min(n - 1, Math.max(0, Math.floor(frac[axis] * n)));
    this.slider.max = String(n - 1);
    this.slider.value = String(s);
    this.slider.disabled = n <= 1;
    this.sliceText.textContent = `${this.state.plane} ${s + 1} / ${n}`;
    this.root.dataset.slice = `${this.state.plane} ${s}/${n}`;
  }

  setSlice(s) {
    const [axis, n] = this.axisCount();
    const frac = Array.from(this.nv.scene.crosshairPos);
    frac[axis] = (Math.min(n - 1, Math.max(0, s)) + 0.5) / n;
    this.nv.scene.crosshairPos = frac;
    this.focus = null;
    this.syncSlider();
    this.redraw();
  }

  setPlane(plane) {
    this.state.plane = plane;
    this.nv.setSliceType(PLANES[plane][0]);
    this.syncSlider();
    this.redraw();
  }

  paint() {
    if (!this.nv || this.nv.volumes.length !== this.layers.length) return;
    const op = this.state.opacity;
    this.layers.forEach((layer, i) => {
      if (layer.kind === "image") return;
      const on = layer.kind === "gt" ? layer.name === this.state.structure : !this.state.hidden.has(layer.name);
      this.nv.volumes[i].opacity = on ? op : 0;
    });
    this.nv.overlayOutlineWidth = this.state.outline ? 0.25 : 0;
    this.nv.updateGLVolume();
    this.redraw();
  }

  redraw() {
    this.nv.drawScene();
    this.draws += 1;
    this.root.dataset.draws = String(this.draws);
  }
}

const CSS = `
.npc-viewer { font-size: 0.85rem; margin: 0.5rem 0 1rem; }
.npc-viewer .npc-row { display: flex; flex-wrap: wrap; gap: 0.4rem 1rem; align-items: center; margin: 0.25rem 0; }
.npc-viewer .npc-field { display: inline-flex; gap: 0.35rem; align-items: center; margin: 0; }
.npc-viewer .npc-field > span { font-weight: 600; }
.npc-viewer select { max-width: 22rem; }
.npc-viewer .npc-slice { width: 14rem; }
.npc-viewer .npc-level, .npc-viewer .npc-width { width: 9rem; }
.npc-viewer .npc-preds { display: flex; flex-wrap: wrap; gap: 0.2rem 0.9rem; margin: 0.3rem 0; }
.npc-viewer .npc-preds-title { font-weight: 600; }
.npc-viewer .npc-all { font-size: 0.75rem; padding: 0 0.4rem; }
.npc-viewer .npc-pred-item { display: inline-flex; gap: 0.3rem; align-items: center; margin: 0; }
.npc-viewer .npc-swatch { display: inline-block; width: 0.8rem; height: 0.8rem; border-radius: 2px; }
.npc-viewer .npc-canvas-box { width: 100%; height: 460px; background: #000; }
.npc-viewer .npc-canvas { width: 100%; height: 100%; display: block; }
.npc-viewer .npc-note, .npc-viewer .npc-none { color: #555; }
.npc-viewer .npc-msg { color: #a00; }
`;

for (const root of document.querySelectorAll(".npc-viewer[data-manifest]")) {
  const v = new Viewer(root);
  v.start().catch((err) => {
    root.dataset.state = "error";
    root.append(el("div", { class: "npc-msg", text: `viewer error: ${err && err.message ? err.message : err}` }));
  });
}
