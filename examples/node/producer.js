// A Node.js producer for edge-worker: publishes msgpack job requests to the request queue and matches the
// replies by correlation id. Each reply is printed on stdout as one JSON line; progress goes to stderr.
//
//   node producer.js [--url URL] [--queue NAME] [--reply-queue NAME] [--timeout SECONDS]
//
// Environment: AMQP_URL, REQUEST_QUEUE, REPLY_QUEUE, REPLY_TIMEOUT_S (the options win).
// Exit codes: 0 every request got its final reply, 1 some did not in time, 2 bad usage, 69 broker unreachable.

import { createHash, randomBytes, randomUUID } from "node:crypto";
import { parseArgs } from "node:util";

import { decode, encode } from "@msgpack/msgpack";
import amqplib from "amqplib";

const USAGE = "usage: node producer.js [--url URL] [--queue NAME] [--reply-queue NAME] [--timeout SECONDS]";

function options() {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        url: { type: "string" },
        queue: { type: "string" },
        "reply-queue": { type: "string" },
        timeout: { type: "string" },
        help: { type: "boolean" },
      },
    }).values;
  } catch (error) {
    console.error(`${error.message}\n${USAGE}`);
    process.exit(2);
  }
  if (parsed.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const timeoutS = Number(parsed.timeout ?? process.env.REPLY_TIMEOUT_S ?? 60);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    console.error(`--timeout: expected a positive number of seconds, got ${parsed.timeout}\n${USAGE}`);
    process.exit(2);
  }
  return {
    url: parsed.url ?? process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2F",
    queue: parsed.queue ?? process.env.REQUEST_QUEUE ?? "edge.jobs",
    // A named, durable reply queue survives a reconnect of this producer; without a name, a private
    // server-named queue is used, which disappears with the connection.
    replyQueue: parsed["reply-queue"] ?? process.env.REPLY_QUEUE ?? "",
    timeoutS,
  };
}

const sha256 = (data) => createHash("sha256").update(data).digest("hex");

// The requests this example sends. Uint8Array/Buffer values are packed as msgpack bin (embedded inputs),
// strings as msgpack str. `sent` records the sha256 of each input's bytes, to compare with the results.
function requests() {
  const frame = randomBytes(4096);
  const thumbnail = randomBytes(64);
  const image = randomBytes(1000);
  return [
    {
      name: "embedded",
      // Two input items with bins, and a str beside them: in a request with any bin the str is sent as UTF-8.
      body: {
        model: { identifier: "ed542963de", version: "1.0.1" },
        sources: { "cam-1": { image: frame, label: "front door" }, "cam-2": { image: thumbnail } },
        request_id: "node-embedded",
      },
      sent: {
        "cam-1": { image: sha256(frame), label: sha256(Buffer.from("front door", "utf8")) },
        "cam-2": { image: sha256(thumbnail) },
      },
    },
    {
      name: "shorthand",
      // The one-level shorthand: {model input: data} is the input item "job", as in the edge SDK.
      body: { model: "sha256", version: "1.0.0", sources: { image }, request_id: "node-shorthand" },
      sent: { job: { image: sha256(image) } },
    },
    {
      name: "text",
      // Every value a str: a text job. The sleep model waits the given seconds.
      body: {
        model: { identifier: "sleep", version: "1.0.0" },
        sources: { job: { seconds: "0.1" } },
        updates: true, // also get the non-final SUBMITTED reply
        request_id: "node-text",
      },
      sent: { job: { seconds: sha256(Buffer.from("0.1", "utf8")) } },
    },
  ];
}

// JSON has no bytes: msgpack bins in a reply (none with the emulator's models) are printed as base64.
function toJson(value) {
  return JSON.stringify(value, (_key, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("base64") : v));
}

async function main() {
  const { url, queue, replyQueue, timeoutS } = options();
  let connection;
  try {
    connection = await amqplib.connect(url);
  } catch (error) {
    console.error(`broker unreachable: ${error.code ?? error.message}`);
    return 69;
  }
  connection.on("error", (error) => console.error(`connection error: ${error.message}`));
  try {
    const channel = await connection.createConfirmChannel(); // publishes are confirmed by the broker
    const replies = replyQueue
      ? (await channel.assertQueue(replyQueue, { durable: true })).queue
      : (await channel.assertQueue("", { exclusive: true })).queue;

    let returned = 0; // mandatory publishes the broker could not route: the request queue does not exist
    channel.on("return", (message) => {
      returned += 1;
      console.error(`request ${message.properties.messageId} returned: no queue ${queue}`);
    });
    const pending = new Map(); // correlation id -> the request it answers
    let resolveAll;
    const allDone = new Promise((resolve) => {
      resolveAll = resolve;
    });
    await channel.consume(
      replies,
      (message) => {
        if (message === null) return; // the broker cancelled the consumer
        channel.ack(message);
        const correlationId = message.properties.correlationId;
        const request = pending.get(correlationId);
        if (request === undefined) return; // not ours, or a repeated final reply (replies are at least once)
        const reply = decode(message.content);
        console.log(
          toJson({
            request: request.name,
            correlation_id: correlationId,
            matched: reply.correlation_id === correlationId,
            sent: request.sent,
            properties: {
              message_id: message.properties.messageId,
              type: message.properties.type,
              content_type: message.properties.contentType,
              headers: message.properties.headers,
            },
            reply,
          }),
        );
        if (reply.final) {
          pending.delete(correlationId);
          console.error(`${request.name}: ${reply.status}${reply.error ? ` ${reply.error.code}` : ""}`);
          if (pending.size === 0) resolveAll();
        }
      },
      { noAck: false },
    );

    for (const request of requests()) {
      const messageId = randomUUID(); // the idempotency key: reuse it to publish the same request again
      pending.set(messageId, request);
      channel.sendToQueue(queue, Buffer.from(encode(request.body)), {
        persistent: true,
        contentType: "application/msgpack",
        messageId,
        correlationId: messageId,
        replyTo: replies,
        mandatory: true,
      });
    }
    await channel.waitForConfirms(); // throws if the broker refused any of them
    if (returned > 0) return 1; // the broker returns before it confirms
    console.error(`published ${pending.size} requests to ${queue}, replies on ${replies}`);

    let timer;
    const timedOut = new Promise((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutS * 1000);
    });
    const outcome = await Promise.race([allDone, timedOut]);
    clearTimeout(timer);
    if (outcome === "timeout") {
      console.error(`no final reply within ${timeoutS} s for: ${[...pending.values()].map((r) => r.name).join(", ")}`);
      return 1;
    }
    return 0;
  } finally {
    await connection.close().catch(() => {});
  }
}

process.exitCode = await main();
