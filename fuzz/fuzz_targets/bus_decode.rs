//! Fuzz target: arbitrary bytes as a bus record's payload and headers, decoded as every bus
//! message type (and as a dead letter of a schema it does not know). Nothing may panic: a bus
//! record that cannot be read must become a dead letter, not a crash loop.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pushfan_bus::envelope::{decode, Record};
use pushfan_bus::messages::{DeadLetter, DeliveryBatch, DeliveryResultBatch, PublishRequest, ShardJob};
use pushfan_bus::{BusMessage, Headers};

fn read<M: BusMessage + std::fmt::Debug>(record: &Record) {
    if let Ok(decoded) = decode::<M>(record) {
        let _ = format!("{:?}", decoded.message);
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte says how many of the next bytes are header text, the rest is the payload.
    let (head, payload) = match data.split_first() {
        Some((&len, rest)) => rest.split_at(usize::from(len).min(rest.len())),
        None => (&[][..], data),
    };
    let payload = Bytes::copy_from_slice(payload);
    let mut headers = Headers::default();
    let mut fields = head.split(|&b| b == 0);
    headers.insert(Headers::TRACEPARENT, fields.next().unwrap_or_default());
    headers.insert(Headers::IDEMPOTENCY_KEY, fields.next().unwrap_or_default());
    let record = |schema: &[u8]| {
        let mut headers = headers.clone();
        headers.insert(Headers::SCHEMA, schema);
        Record { payload: payload.clone(), headers, ..Record::default() }
    };
    read::<PublishRequest>(&record(PublishRequest::SCHEMA.as_bytes()));
    read::<ShardJob>(&record(ShardJob::SCHEMA.as_bytes()));
    read::<DeliveryBatch>(&record(DeliveryBatch::SCHEMA.as_bytes()));
    read::<DeliveryResultBatch>(&record(DeliveryResultBatch::SCHEMA.as_bytes()));
    read::<DeadLetter>(&record(DeadLetter::SCHEMA.as_bytes()));
    let unknown = record(fields.next().unwrap_or_default());
    read::<ShardJob>(&unknown);
});
