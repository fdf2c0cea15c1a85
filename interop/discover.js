// Discover ADR-32 services with the official JS services client (@nats-io/services).
// Usage: node discover.js <nats-url> <service-name>
// Prints one JSON line per verb: {"verb":"ping","replies":[...]}; exits 1 if a verb got no reply.
const { connect } = require("@nats-io/transport-node");
const { Svcm } = require("@nats-io/services");

async function main() {
  const [url, name] = process.argv.slice(2);
  const nc = await connect({ servers: url });
  const client = new Svcm(nc).client({ maxWait: 1000 });
  let ok = true;
  for (const verb of ["ping", "info", "stats"]) {
    const replies = [];
    for await (const r of await client[verb](name)) {
      replies.push(r);
    }
    if (replies.length === 0) ok = false;
    console.log(JSON.stringify({ verb, replies }));
  }
  await nc.close();
  process.exit(ok ? 0 : 1);
}
main().catch((e) => {
  console.error(e);
  process.exit(2);
});
