// Drives the ComfyUI editor in headless Chromium for tests/browser/test_editor.py.
//
//   node driver.mjs <config.json>      (prints one JSON result line on stdout)
//
// config: { url, chromium, playwright (path of the playwright-core package), userDataDir, shotsDir,
//           workflows: [{name, path}], queue: {name, swap: {NodeType: {widget: value}}},
//           alsoQueue: [{name, swap}], timeoutMs }
// For every workflow: load it with app.loadGraphData as the template browser does, report the
// graph's nodes (type, registered?, serialised widget values), the prompt the frontend would queue
// (app.graphToPrompt) and the console errors seen while loading; screenshot <name>.png.
// Then the `queue` workflow: swap model names to the fixtures, app.queuePrompt, wait for /history,
// screenshot editor.png. The Python test makes every assertion; this script only observes.
import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const { chromium } = createRequire(import.meta.url)(config.playwright)
const timeout = config.timeoutMs ?? 300000
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function getJson(path) {
  const r = await fetch(config.url + path)
  return r.json()
}

// Zoom so the whole graph fills the visible canvas (the editor's own fit leaves wide margins);
// returns the graph's box on screen, the crop of the thumbnail.
const MARGIN = { left: 80, top: 90, right: 24, bottom: 24 } // sidebar and top bar overlay the canvas
function fitGraph(page) {
  return page.evaluate((m) => {
    const app = window.comfyAPI.app.app
    const box = [Infinity, Infinity, -Infinity, -Infinity]
    for (const n of app.graph.nodes) {
      box[0] = Math.min(box[0], n.pos[0]); box[1] = Math.min(box[1], n.pos[1] - 30)
      box[2] = Math.max(box[2], n.pos[0] + n.size[0]); box[3] = Math.max(box[3], n.pos[1] + n.size[1])
    }
    const r = app.canvas.canvas.getBoundingClientRect()
    const w = box[2] - box[0], h = box[3] - box[1]
    const availW = r.width - m.left - m.right, availH = r.height - m.top - m.bottom
    const scale = Math.min(availW / w, availH / h, 1.2)
    const ds = app.canvas.ds
    ds.scale = scale
    ds.offset = [(m.left + (availW - w * scale) / 2) / scale - box[0],
      (m.top + (availH - h * scale) / 2) / scale - box[1]]
    app.canvas.setDirty(true, true)
    const [x0, y0] = ds.convertOffsetToCanvas([box[0], box[1]])
    const [x1, y1] = ds.convertOffsetToCanvas([box[2], box[3]])
    return { x: r.left + x0 - 12, y: r.top + y0 - 12, width: x1 - x0 + 24, height: y1 - y0 + 24 }
  }, MARGIN)
}

// What the DTGen nodes show on the canvas (nodes/adapters/web/dtgen_status.js), the text boxes in
// the page, and whether a status box leaked into the saved widget values.
function statusTexts(page) {
  return page.evaluate(() => {
    const app = window.comfyAPI.app.app
    const statusText = {}
    const savedWithStatus = []
    for (const n of app.graph.nodes) {
      const w = n.widgets?.find((x) => x.name === 'dtgen_status')
      if (!w) continue
      statusText[n.type] = w.value
      if ((n.serialize().widgets_values ?? []).includes(w.value)) savedWithStatus.push(n.type)
    }
    const pageText = Array.from(document.querySelectorAll('textarea')).map((t) => t.value).filter(Boolean)
    return { statusText, savedWithStatus, pageText }
  })
}

// Wait until `count` more prompts than `before` are in /history and the queue is empty.
async function waitForRuns(before, count, nodeErrors) {
  const deadline = Date.now() + timeout
  while (Date.now() < deadline) {
    const queue = await getJson('/queue')
    const history = await getJson('/history')
    const ids = Object.keys(history)
    if (ids.length >= before + count && !queue.queue_running.length && !queue.queue_pending.length) {
      return ids.slice(before).map((id) => history[id])
    }
    if (nodeErrors && Object.keys(nodeErrors).length) return []
    await sleep(500)
  }
  return []
}

// Load a workflow file and set widgets ({NodeType: {widget: value}}); returns what was set.
function loadAndSwap(page, data, swap, tab) {
  return page.evaluate(async ({ data, swap, tab }) => {
    const app = window.comfyAPI.app.app
    await app.loadGraphData(data, true, true, tab, { showMissingModelsDialog: false })
    const done = []
    for (const node of app.graph.nodes) {
      for (const [name, value] of Object.entries(swap[node.type] ?? {})) {
        const w = node.widgets.find((x) => x.name === name)
        w.value = value
        w.callback?.(value)
        done.push(`${node.type}.${name}`)
      }
    }
    return done
  }, { data, swap, tab })
}

const result = { startupErrors: [], workflows: [], queue: null, finalize: null, handBuilt: null }
let errors = result.startupErrors
const context = await chromium.launchPersistentContext(config.userDataDir, {
  executablePath: config.chromium,
  headless: true,
  viewport: { width: 1920, height: 1080 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
try {
  const page = context.pages()[0] ?? (await context.newPage())
  page.setDefaultTimeout(timeout)
  page.on('console', (msg) => { if (msg.type() === 'error') errors.push(msg.text()) })
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}\n${err.stack}`))
  page.on('response', (r) => { if (r.status() >= 400) errors.push(`HTTP ${r.status()} ${r.url()}`) })
  page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`))

  await page.goto(config.url, { waitUntil: 'load' })
  await page.waitForFunction(() => {
    const app = window.comfyAPI?.app?.app
    return app?.graph && app.canvas && window.LiteGraph?.registered_node_types?.DTGenPromptSampler
  })
  await sleep(1500) // let startup dialogs and extensions settle

  const frames = () => page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))))

  for (const wf of config.workflows) {
    const entry = { name: wf.name, errors: [] }
    errors = entry.errors
    const data = JSON.parse(readFileSync(wf.path, 'utf8'))
    Object.assign(entry, await page.evaluate(async ({ data, name }) => {
      const app = window.comfyAPI.app.app
      await app.loadGraphData(data, true, true, name, { showMissingModelsDialog: false })
      const nodes = app.graph.nodes.map((n) => {
        const s = n.serialize()
        return { id: n.id, type: n.type, registered: n.type in window.LiteGraph.registered_node_types,
          hasErrors: !!n.has_errors, widgets_values: s.widgets_values ?? [],
          inputs: (s.inputs ?? []).map((i) => ({ name: i.name, link: i.link ?? null })) }
      })
      const { output } = await app.graphToPrompt()
      return { nodes, prompt: output }
    }, { data, name: wf.name }))
    const clip = await fitGraph(page)
    await frames()
    await sleep(300)
    if (config.shotsDir) await page.screenshot({ path: join(config.shotsDir, `${wf.name}.png`), clip })
    result.workflows.push(entry)
  }

  if (config.queue) {
    const q = { errors: [] }
    errors = q.errors
    const before = Object.keys(await getJson('/history')).length
    const wf = config.workflows.find((w) => w.name === config.queue.name)
    const data = JSON.parse(readFileSync(wf.path, 'utf8'))
    q.swapped = await loadAndSwap(page, data, config.queue.swap, 'queued')
    await page.evaluate(() => window.comfyAPI.app.app.queuePrompt(0, 1))
    q.nodeErrors = await page.evaluate(() => window.comfyAPI.app.app.lastNodeErrors ?? null)
    const [last] = (await waitForRuns(before, 1, q.nodeErrors)).slice(-1)
    q.status = last?.status
    q.outputs = last?.outputs
    await sleep(1500) // previews and node texts arrive over the websocket
    Object.assign(q, await statusTexts(page))
    await fitGraph(page)
    await frames()
    if (config.shotsDir) await page.screenshot({ path: join(config.shotsDir, 'editor.png') })
    result.queue = q

    // The same template in a new tab with a DTGen Dataset Finalize fed by the writer's dataset
    // output: one queue run writes and finalizes, and all four DTGen nodes show their text.
    const f = { errors: [] }
    errors = f.errors
    const fBefore = Object.keys(await getJson('/history')).length
    await loadAndSwap(page, data, config.finalize.swap, 'finalized')
    await page.evaluate(async () => {
      const app = window.comfyAPI.app.app
      const writer = app.graph.nodes.find((n) => n.type === 'DTGenDatasetWriter')
      const fin = window.LiteGraph.createNode('DTGenDatasetFinalize')
      fin.pos = [writer.pos[0], writer.pos[1] + writer.size[1] + 60]
      app.graph.add(fin)
      writer.connect(2, fin, fin.findInputSlot('dataset'))   // outputs: dataset_path, status, dataset
      await app.queuePrompt(0, 1)
    })
    f.nodeErrors = await page.evaluate(() => window.comfyAPI.app.app.lastNodeErrors ?? null)
    const [fLast] = (await waitForRuns(fBefore, 1, f.nodeErrors)).slice(-1)
    f.status = fLast?.status
    await sleep(1500)
    Object.assign(f, await statusTexts(page))
    await fitGraph(page)
    await frames()
    if (config.shotsDir) await page.screenshot({ path: join(config.shotsDir, 'finalized.png') })
    result.finalize = f
  }

  // More templates queued as they are in the file, with only the swaps (e.g. the training one).
  result.alsoQueued = []
  for (const extra of config.alsoQueue ?? []) {
    const run = { name: extra.name, errors: [] }
    errors = run.errors
    const before = Object.keys(await getJson('/history')).length
    const wf = config.workflows.find((w) => w.name === extra.name)
    const data = JSON.parse(readFileSync(wf.path, 'utf8'))
    run.swapped = await loadAndSwap(page, data, extra.swap, `queued ${extra.name}`)
    await page.evaluate(() => window.comfyAPI.app.app.queuePrompt(0, 1))
    run.nodeErrors = await page.evaluate(() => window.comfyAPI.app.app.lastNodeErrors ?? null)
    const [last] = (await waitForRuns(before, 1, run.nodeErrors)).slice(-1)
    run.status = last?.status
    run.outputs = last?.outputs
    await sleep(1500)
    Object.assign(run, await statusTexts(page))
    result.alsoQueued.push(run)
  }

  if (config.handBuilt) {
    // A fresh canvas: the DTGen nodes dragged in with their default widgets and wired by hand to
    // stock SD3 nodes, then queued with a batch count of 8 (the seed widget randomizes each time).
    const h = { errors: [] }
    errors = h.errors
    const before = Object.keys(await getJson('/history')).length
    h.built = await page.evaluate(async (cfg) => {
      const app = window.comfyAPI.app.app
      await app.loadGraphData({ last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {},
        extra: {}, version: 0.4 }, true, true, 'hand-built', { showMissingModelsDialog: false })
      const L = window.LiteGraph
      const add = (type, x, y) => { const n = L.createNode(type); n.pos = [x, y]; app.graph.add(n); return n }
      const slot = (list, name, what) => {
        const i = list.findIndex((s) => s.name === name || s.label === name || s.localized_name === name)
        if (i < 0) throw new Error(`no ${what} ${name}: ${list.map((s) => s.name).join(', ')}`)
        return i
      }
      const link = (a, out, b, inp) => a.connect(slot(a.outputs, out, `output of ${a.type}`), b,
        slot(b.inputs, inp, `input of ${b.type}`))
      const set = (n, name, value) => {
        const w = n.widgets.find((x) => x.name === name)
        if (!w) throw new Error(`no widget ${n.type}.${name}`)
        w.value = value
        w.callback?.(value)
      }
      const ckpt = add('CheckpointLoaderSimple', 0, 0); set(ckpt, 'ckpt_name', cfg.checkpoint)
      const sampler = add('DTGenPromptSampler', 300, 0); set(sampler, 'pack', 'fruits')
      const pos = add('CLIPTextEncode', 650, 0)
      const neg = add('CLIPTextEncode', 650, 250)
      const latent = add('EmptySD3LatentImage', 650, 500); set(latent, 'width', 128); set(latent, 'height', 128)
      const ks = add('KSampler', 1000, 0); set(ks, 'steps', 4)
      const dec = add('VAEDecode', 1300, 0)
      const clip = add('DTGenClipLoader', 1300, 300); set(clip, 'weights', cfg.clipWeights)
      const filt = add('DTGenClipFilter', 1600, 0)
      const writer = add('DTGenDatasetWriter', 1950, 0)
      link(ckpt, 'MODEL', ks, 'model'); link(ckpt, 'CLIP', pos, 'clip'); link(ckpt, 'CLIP', neg, 'clip')
      link(ckpt, 'VAE', dec, 'vae')
      link(sampler, 'positive', pos, 'text'); link(sampler, 'negative', neg, 'text')
      link(pos, 'CONDITIONING', ks, 'positive'); link(neg, 'CONDITIONING', ks, 'negative')
      link(latent, 'LATENT', ks, 'latent_image'); link(sampler, 'seed', ks, 'seed')
      link(ks, 'LATENT', dec, 'samples')
      link(clip, 'clip', filt, 'clip'); link(dec, 'IMAGE', filt, 'images')
      for (const name of ['positive', 'label', 'metadata', 'negative', 'seed']) link(sampler, name, filt, name)
      link(filt, 'scored', writer, 'scored')
      const control = sampler.widgets.find((w) => w.name === 'control_after_generate')?.value
      const defaults = Object.fromEntries(sampler.widgets.map((w) => [w.name, w.value]))
      const writerDataset = writer.widgets.find((w) => w.name === 'dataset_name').value
      await app.queuePrompt(0, 8)
      return { control, defaults, writerDataset }
    }, config.handBuilt)
    h.nodeErrors = await page.evaluate(() => window.comfyAPI.app.app.lastNodeErrors ?? null)
    h.runs = (await waitForRuns(before, 8, h.nodeErrors)).map((r) => r.status?.status_str)
    result.handBuilt = h
  }
} finally {
  await context.close()
}
console.log(JSON.stringify(result))
