//! The prediction log: every prediction as a `driftline.inference.v1.PredictionLog` record on
//! the predictions topic, key `entity_id`, through librdkafka (idempotent, acks=all, as the
//! platform's Python producers are configured by the control plane's spec). Producing never
//! blocks the response: a record librdkafka's queue cannot take is dropped and counted, as
//! are those the broker never acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use crate::proto::inference::PredictionLog;
use crate::spec::LogSpec;

/// What happened to the records handed to the log.
#[derive(Debug, Default)]
pub struct LogCounts {
    pub produced: AtomicU64,
    pub acknowledged: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub delivery_failed: AtomicU64,
}

struct Context {
    counts: Arc<LogCounts>,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() {
            &self.counts.acknowledged
        } else {
            &self.counts.delivery_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct PredictionLogger {
    producer: ThreadedProducer<Context>,
    topic: String,
    pub counts: Arc<LogCounts>,
}

impl PredictionLogger {
    pub fn new(spec: &LogSpec) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        for (key, value) in &spec.config {
            config.set(key, value);
        }
        let counts = Arc::new(LogCounts::default());
        let producer = config.create_with_context(Context {
            counts: counts.clone(),
        })?;
        Ok(PredictionLogger {
            producer,
            topic: spec.topic.clone(),
            counts,
        })
    }

    pub fn log(&self, record: &PredictionLog) {
        let payload = record.encode_to_vec();
        let sent = self.producer.send(
            BaseRecord::<str, [u8]>::to(&self.topic)
                .key(&record.entity_id)
                .payload(&payload),
        );
        match sent {
            Ok(()) => {
                self.counts.produced.fetch_add(1, Ordering::Relaxed);
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                self.counts
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counts.delivery_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Wait (at most `timeout`) for the broker to acknowledge what is queued; returns whether
    /// everything was.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.producer.flush(Timeout::After(timeout)).is_ok()
    }
}
