//! The prediction log: every prediction as a `driftline.inference.v1.PredictionLog` record on
//! the predictions topic, key `entity_id`, through librdkafka (idempotent, acks=all, as the
//! platform's Python producers are configured by the control plane's spec). Producing never
//! blocks the response: a record librdkafka's queue cannot take is dropped and counted, as
//! are those the broker never acknowledged.

use std::time::Duration;

use prometheus::IntCounter;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use crate::metrics::Metrics;
use crate::proto::inference::PredictionLog;
use crate::spec::LogSpec;

/// What happened to the records handed to the log (the metrics' counters).
#[derive(Clone)]
pub struct LogCounts {
    pub produced: IntCounter,
    pub acknowledged: IntCounter,
    pub dropped_queue_full: IntCounter,
    pub delivery_failed: IntCounter,
}

impl LogCounts {
    pub fn new(metrics: &Metrics) -> Self {
        let outcome = |name: &str| metrics.log_records.with_label_values(&[name]);
        let dropped = |reason: &str| metrics.log_dropped.with_label_values(&[reason]);
        LogCounts {
            produced: outcome("produced"),
            acknowledged: outcome("acknowledged"),
            dropped_queue_full: dropped("queue_full"),
            delivery_failed: dropped("delivery_failed"),
        }
    }
}

struct Context {
    counts: LogCounts,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() {
            self.counts.acknowledged.inc();
        } else {
            self.counts.delivery_failed.inc();
        }
    }
}

/// `head` followed by `record`'s encoding: one `PredictionLog` to a reader.
fn record_bytes(head: &[u8], record: &PredictionLog) -> Vec<u8> {
    let mut payload = Vec::with_capacity(head.len() + record.encoded_len());
    payload.extend_from_slice(head);
    record.encode(&mut payload).expect("a Vec grows as needed");
    payload
}

pub struct PredictionLogger {
    producer: ThreadedProducer<Context>,
    topic: String,
    pub counts: LogCounts,
}

impl PredictionLogger {
    pub fn new(spec: &LogSpec, counts: LogCounts) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        for (key, value) in &spec.config {
            config.set(key, value);
        }
        let producer = config.create_with_context(Context {
            counts: counts.clone(),
        })?;
        Ok(PredictionLogger {
            producer,
            topic: spec.topic.clone(),
            counts,
        })
    }

    /// Queues one record: `head` (the fields every record of the model shares, serialized
    /// once) followed by `record`'s own. Protobuf reads two encodings of a message back to back
    /// as their merge, so a reader gets one whole `PredictionLog`.
    pub fn log(&self, head: &[u8], record: &PredictionLog) {
        let payload = record_bytes(head, record);
        let sent = self.producer.send(
            BaseRecord::<str, [u8]>::to(&self.topic)
                .key(&record.entity_id)
                .payload(&payload),
        );
        match sent {
            Ok(()) => self.counts.produced.inc(),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.counts.dropped_queue_full.inc()
            }
            Err(_) => self.counts.delivery_failed.inc(),
        }
    }

    /// Records queued or in flight, not yet acknowledged.
    pub fn buffered(&self) -> i64 {
        i64::from(self.producer.in_flight_count())
    }

    /// Wait (at most `timeout`) for the broker to acknowledge what is queued; returns whether
    /// everything was.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.producer.flush(Timeout::After(timeout)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_and_a_record_read_as_one_message() {
        let head = PredictionLog {
            model_name: "fraud".into(),
            model_version: 7,
            feature_names: vec!["a".into(), "b".into()],
            role: "champion".into(),
            ..PredictionLog::default()
        };
        let own = PredictionLog {
            prediction_id: "p-1".into(),
            entity_id: "card-1".into(),
            event_id: "ev-1".into(),
            score: 0.25,
            label: 0,
            feature_values: vec![1.5, -2.0],
            predicted_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 5,
            }),
            ..PredictionLog::default()
        };
        let read =
            PredictionLog::decode(record_bytes(&head.encode_to_vec(), &own).as_slice()).unwrap();
        assert_eq!(
            read,
            PredictionLog {
                model_name: head.model_name.clone(),
                model_version: 7,
                feature_names: head.feature_names.clone(),
                role: head.role.clone(),
                ..own
            }
        );
    }
}
