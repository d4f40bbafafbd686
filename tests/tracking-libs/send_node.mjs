// Send identify + track + page with @segment/analytics-node.
//
// Usage: node send_node.mjs --host URL --write-key KEY --user-id ID --email EMAIL
//
// Exits non-zero unless every one of the three events was acknowledged by the
// server (per-call callbacks) and the library emitted no 'error' event.
// Set TRACKING_DEBUG=1 to print each HTTP request/response the library makes.
import { parseArgs } from 'node:util'
import { Analytics } from '@segment/analytics-node'

const { values: args } = parseArgs({
  options: {
    host: { type: 'string' },
    'write-key': { type: 'string' },
    'user-id': { type: 'string' },
    email: { type: 'string' },
  },
  strict: true,
})
for (const name of ['host', 'write-key', 'user-id', 'email']) {
  if (!args[name]) {
    console.error(`send_node: --${name} is required`)
    process.exit(2)
  }
}

const debug = process.env.TRACKING_DEBUG === '1'
const userId = args['user-id']

const analytics = new Analytics({
  writeKey: args['write-key'],
  host: args.host,
  // Fail within seconds instead of retrying with backoff for minutes.
  maxRetries: 2,
  httpRequestTimeout: 10000,
})

const errors = []
let delivered = 0
analytics.on('error', (err) => {
  errors.push(err)
  console.error('send_node: library error:', err?.code, err?.reason ?? err)
})
if (debug) {
  analytics.on('http_request', (req) => console.error('send_node: request', req.method, req.url, req.body))
  analytics.on('http_response', (res) => console.error('send_node: response', res.status, res.statusText))
}
const done = (what) => (err) => {
  if (err) {
    errors.push(err)
    console.error(`send_node: ${what} failed:`, err)
  } else {
    delivered += 1
  }
}

analytics.identify(
  { userId, traits: { email: args.email, first_name: 'Ana' } },
  done('identify'),
)
analytics.track(
  { userId, event: 'Order Completed', properties: { order_id: 'o-1', total: 42.5, currency: 'EUR' } },
  done('track'),
)
analytics.page(
  { userId, name: 'Checkout', properties: { path: '/checkout', title: 'Checkout' } },
  done('page'),
)

await analytics.closeAndFlush({ timeout: 30000 })

if (errors.length > 0 || delivered !== 3) {
  console.error(`send_node: ${delivered}/3 events delivered, ${errors.length} error(s)`)
  process.exit(1)
}
