// A retriever client in Node (grpc-js), written from proto/retriever/v1/retriever.proto alone.
//
//   node client.js HOST:PORT COLLECTION REQUEST.json
//
// REQUEST.json: {"vectors": [[...], ...], "k": 5, "filter": {...}, "token": "..." (optional),
//                "upsert": {"documents": [{"id": ...}, ...], "vectors": [[...], ...]} (optional)}
// Prints one JSON object: the collection's schema, the hits of a vector search (per query, best
// first), a filtered count, the first page of a scroll, stored documents by id, and, when asked,
// an upsert streamed in (its acks), the search again and the delete of what it added.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.join(__dirname, "..", "..", "proto", "retriever", "v1", "retriever.proto");
const options = { keepCase: true, longs: Number, defaults: true, oneofs: true };
const definition = protoLoader.loadSync(PROTO, options);
const { Retriever } = grpc.loadPackageDefinition(definition).retriever.v1;

// number[][] -> Matrix: rows * dim float32, little-endian, row-major
function matrix(rows) {
  const dim = rows[0].length;
  const bytes = Buffer.alloc(rows.length * dim * 4);
  rows.forEach((row, i) => row.forEach((x, j) => bytes.writeFloatLE(x, (i * dim + j) * 4)));
  return { rows: rows.length, dim, float32_le: bytes };
}

// SearchResponse (columnar) -> per query [{id, score}]: query b owns offsets[b] .. offsets[b + 1] - 1
function hitsOf(response) {
  const out = [];
  for (let b = 0; b + 1 < response.offsets.length; b++) {
    const hits = [];
    for (let i = response.offsets[b]; i < response.offsets[b + 1]; i++) {
      hits.push({ id: response.ids[i], score: response.scores.readFloatLE(i * 4) });
    }
    out.push(hits);
  }
  return out;
}

function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 10000 }, (error, response) =>
      error ? reject(error) : resolve(response));
  });
}

// Upsert is a bidirectional stream: one ack per batch, sent once the batch is committed
function upsert(client, batches, metadata) {
  return new Promise((resolve, reject) => {
    const acks = [];
    const stream = client.Upsert(metadata, { deadline: Date.now() + 10000 });
    stream.on("data", (ack) => acks.push({ batch: ack.batch, upserted: ack.upserted }));
    stream.on("error", reject);
    stream.on("end", () => resolve(acks));
    batches.forEach((batch) => stream.write(batch));
    stream.end();
  });
}

async function main() {
  const [address, collection, requestFile] = process.argv.slice(2);
  const ask = JSON.parse(fs.readFileSync(requestFile, "utf8"));
  const client = new Retriever(address, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (ask.token) metadata.add("authorization", `Bearer ${ask.token}`);
  const filter_json = ask.filter ? JSON.stringify(ask.filter) : "";
  const search = { collection, vectors: matrix(ask.vectors), k: ask.k || 10, omit_documents: true };

  const info = await unary(client, "GetCollection", { collection }, metadata);
  const out = {
    schema: {
      fields: info.fields.map((f) => ({
        name: f.name, kind: f.kind, dim: f.dim, query_inputs: f.query_inputs,
      })),
      max_k: info.max_k,
    },
    hits: hitsOf(await unary(client, "Search", search, metadata)),
    filtered_hits: hitsOf(await unary(client, "Search", { ...search, filter_json }, metadata)),
    count: (await unary(client, "Count", { collection, filter_json }, metadata)).count,
  };
  const page = await unary(client, "Scroll", { collection, filter_json, limit: 3 }, metadata);
  out.scroll = { ids: page.documents_json.map((d) => JSON.parse(d).id), next_after: page.next_after };
  const ids = out.hits[0].slice(0, 2).map((h) => h.id).concat(["no-such-id"]);
  const found = await unary(client, "GetDocuments", { collection, ids }, metadata);
  out.documents = found.documents_json.map((d) => JSON.parse(d));
  out.missing = found.missing;
  if (ask.upsert) {
    const batch = {
      collection,
      documents_json: ask.upsert.documents.map((d) => JSON.stringify(d)),
      vectors: { [info.fields[0].name]: matrix(ask.upsert.vectors) },
    };
    out.acks = await upsert(client, [batch], metadata);
    const again = { ...search, vectors: matrix(ask.upsert.vectors), k: 1 };
    out.upserted_hits = hitsOf(await unary(client, "Search", again, metadata));
    const removed = ask.upsert.documents.map((d) => d.id);
    out.deleted = (await unary(client, "Delete", { collection, ids: removed }, metadata)).deleted;
  }
  try {
    await unary(client, "Search", { ...search, params: { nprobe: -1 } }, metadata);
  } catch (error) {
    out.bad_request = { code: grpc.status[error.code], details: error.details };
  }
  client.close();
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.error(`error: ${error.details || error.message}`);
  process.exit(1);
});
