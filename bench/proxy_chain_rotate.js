// Apify's proxy-chain (npm "proxy-chain", the gateway Crawlee users run) rotating over a list of upstreams:
// the peer of bench/free_pool_bench.py.  Every request (and every CONNECT) takes the next upstream in turn
// from prepareRequestFunction, as a Crawlee ProxyConfiguration with a list of proxyUrls does; no retries,
// no health checks (proxy-chain has none).
//
//   node bench/proxy_chain_rotate.js PORT LIST_FILE        (npm install --prefix bench/node, once)
//
// LIST_FILE: one upstream URL a line (http://, socks5://).  socks5:// is handed to proxy-chain as
// socks5h:// (names resolved by the upstream, as proxy-pool and pproxy do over SOCKS5); nothing else
// is changed.  Listens on 127.0.0.1:PORT only.
'use strict';
const fs = require('fs');
const path = require('path');
const ProxyChain = require(path.join(__dirname, 'node', 'node_modules', 'proxy-chain'));

const [port, listFile] = process.argv.slice(2);
const upstreams = fs.readFileSync(listFile, 'utf8').split('\n').map((s) => s.trim()).filter(Boolean)
    .map((u) => u.replace(/^socks5:\/\//, 'socks5h://'));
if (!port || upstreams.length === 0) {
    process.stderr.write('usage: node proxy_chain_rotate.js PORT LIST_FILE (a non-empty list)\n');
    process.exit(2);
}
let next = 0;
const server = new ProxyChain.Server({
    host: '127.0.0.1',
    port: Number(port),
    verbose: false,
    prepareRequestFunction: () => {
        const upstreamProxyUrl = upstreams[next];
        next = (next + 1) % upstreams.length;
        return { upstreamProxyUrl };
    },
});
server.on('requestFailed', () => {});
server.listen(() => process.stdout.write(`proxy-chain listening on 127.0.0.1:${server.port} over ${upstreams.length} upstreams\n`));
process.on('SIGTERM', () => server.close(true, () => process.exit(0)));
