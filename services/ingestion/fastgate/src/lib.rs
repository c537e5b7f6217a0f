//! Ingestion's native batch fast path.
//!
//! `BatchGate.examine` takes a batch of Kafka messages (confluent-kafka `Message` objects) and,
//! for every message that is canonical JSON satisfying the data contract, returns its clean
//! protobuf event ready to produce; for anything else it returns None, and the Python gate
//! (`driftline.services.ingestion.gate`) decides, naming the dead-letter reason. The rules come
//! from the contract, compiled in Python (`driftline.services.ingestion.native`): this crate
//! holds no rule of its own, and it only ever accepts what the Python engine accepts, with the
//! same values and the same clean bytes (property tests hold it to that).

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

mod encode;
mod json;
mod resp;
mod rfc3339;
mod rules;

use json::Value;
use rules::{Checked, Field, FieldRules, Kind};

/// What goes into the clean event, in field-number order.
enum Slot {
    Field(usize),
    SourceTopic,
    SourcePartition,
    SourceOffset,
    IngestedAt,
}

/// Where a clean event came from, and when it was ingested (seconds, nanos).
#[derive(Clone, Copy)]
struct Lineage<'a> {
    topic: &'a str,
    partition: i64,
    offset: i64,
    ingested: (i64, i32),
}

#[pyclass(frozen, module = "driftline_fastgate")]
struct BatchGate {
    fields: Vec<Field>,
    id_field: usize,
    key_field: usize,
    max_payload_bytes: usize,
    content_type_header: String,
    json_media_type: Vec<u8>,
    layout: Vec<(u32, Slot)>,
}

impl BatchGate {
    /// The field named `key`, looked for first at `hint` (producers write the fields in the
    /// contract's order, so the next key is almost always the next field).
    fn field_of(&self, key: &[u8], hint: usize) -> Option<usize> {
        if self.fields.get(hint).is_some_and(|f| f.name == key) {
            return Some(hint);
        }
        self.fields.iter().position(|f| f.name == key)
    }

    /// The checked values of a canonical, valid JSON payload, or None.
    fn check(
        &self,
        p: &[u8],
        now_us: i64,
        slots: &mut [Option<Value>],
        checked: &mut Vec<Checked>,
    ) -> bool {
        if p.is_empty() || p.len() > self.max_payload_bytes || !p.is_ascii() || p.contains(&b'\\') {
            return false;
        }
        slots.fill(None);
        let mut next = 0;
        let field_of = |key: &[u8]| {
            let found = self.field_of(key, next);
            next = found.map_or(0, |i| i + 1);
            found
        };
        if !json::read_object(p, slots, field_of) {
            return false;
        }
        checked.clear();
        for (field, slot) in self.fields.iter().zip(slots.iter()) {
            let value = match (&field.kind, slot.expect("read_object fills every slot")) {
                (Kind::Str, Value::Str(a, b)) if field.string_ok(&p[a..b]) => Checked::Str(a, b),
                (Kind::Num, Value::Num(x)) if field.number_ok(x) => Checked::Num(x),
                (Kind::Time, Value::Str(a, b)) => match rfc3339::utc_micros(&p[a..b]) {
                    Some(micros) if field.time_ok(micros, now_us) => Checked::Time(micros),
                    _ => return false,
                },
                _ => return false,
            };
            checked.push(value);
        }
        true
    }

    /// Whether a message's content type is JSON the way the Python gate reads it: no header, a
    /// header without a value, or exactly the JSON media type. Other spellings go the general way.
    fn is_json(&self, message: &Bound<'_, PyAny>) -> PyResult<bool> {
        let headers = message.call_method0(intern!(message.py(), "headers"))?;
        if headers.is_none() {
            return Ok(true);
        }
        let mut found: Option<Bound<'_, PyAny>> = None;
        for item in headers.try_iter()? {
            let item = item?;
            let pair = item.cast::<PyTuple>()?;
            if pair.get_item(0)?.cast::<PyString>()?.to_str()? == self.content_type_header {
                found = Some(pair.get_item(1)?);
            }
        }
        Ok(match found {
            None => true,
            Some(v) if v.is_none() => true,
            Some(v) => v
                .cast::<PyBytes>()
                .is_ok_and(|b| b.as_bytes() == self.json_media_type.as_slice()),
        })
    }

    fn encode(&self, p: &[u8], checked: &[Checked], lineage: &Lineage<'_>, out: &mut Vec<u8>) {
        let Lineage {
            topic,
            partition,
            offset,
            ingested,
        } = *lineage;
        out.clear();
        for (number, slot) in &self.layout {
            let number = *number;
            match slot {
                Slot::Field(i) => match checked[*i] {
                    Checked::Str(a, b) => encode::string(out, number, &p[a..b]),
                    Checked::Num(x) => encode::double(out, number, x),
                    Checked::Time(micros) => {
                        let seconds = micros.div_euclid(1_000_000);
                        let nanos = (micros.rem_euclid(1_000_000) * 1000) as i32;
                        encode::timestamp(out, number, seconds, nanos);
                    }
                },
                Slot::SourceTopic => encode::string(out, number, topic.as_bytes()),
                Slot::SourcePartition => encode::int(out, number, partition),
                Slot::SourceOffset => encode::int(out, number, offset),
                Slot::IngestedAt => encode::timestamp(out, number, ingested.0, ingested.1),
            }
        }
    }
}

#[pymethods]
impl BatchGate {
    /// `fields`: the contract's fields in order, as dicts of `FieldRules`; `lineage`: the clean
    /// event's field numbers of source_topic, source_partition, source_offset and ingested_at.
    #[new]
    #[pyo3(signature = (fields, *, id_field, key_field, max_payload_bytes, lineage, content_type_header, json_media_type))]
    fn new(
        fields: Vec<FieldRules>,
        id_field: &str,
        key_field: &str,
        max_payload_bytes: usize,
        lineage: (u32, u32, u32, u32),
        content_type_header: String,
        json_media_type: Vec<u8>,
    ) -> PyResult<Self> {
        let fields = fields
            .into_iter()
            .map(Field::new)
            .collect::<PyResult<Vec<_>>>()?;
        let string_field = |name: &str| {
            fields
                .iter()
                .position(|f| f.name == name.as_bytes() && matches!(f.kind, Kind::Str))
                .ok_or_else(|| PyValueError::new_err(format!("no string field {name:?}")))
        };
        let (id_field, key_field) = (string_field(id_field)?, string_field(key_field)?);
        let mut layout: Vec<(u32, Slot)> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.rules.number, Slot::Field(i)))
            .collect();
        let (topic, partition, offset, ingested_at) = lineage;
        layout.extend([
            (topic, Slot::SourceTopic),
            (partition, Slot::SourcePartition),
            (offset, Slot::SourceOffset),
            (ingested_at, Slot::IngestedAt),
        ]);
        layout.sort_by_key(|(number, _)| *number);
        if layout.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(PyValueError::new_err("two values share one field number"));
        }
        Ok(BatchGate {
            fields,
            id_field,
            key_field,
            max_payload_bytes,
            content_type_header,
            json_media_type,
            layout,
        })
    }

    /// Four lists over the messages: `cleans[i]` is `(clean event, key)` when the fast path
    /// accepts message `i`, `event_ids[i]` and `sources[i]` (`b"topic/partition/offset"`) its
    /// de-duplication claim; all three are None for a declined message, whose index is in
    /// `declined`. `now_us` is the clock of the event-time window (µs since the epoch);
    /// `ingested_at` the clean events' ingestion time (seconds, nanos).
    fn examine<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
        now_us: i64,
        ingested_at: (i64, i32),
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (cleans, event_ids, sources, declined) = (
            PyList::empty(py),
            PyList::empty(py),
            PyList::empty(py),
            PyList::empty(py),
        );
        let mut slots = vec![None; self.fields.len()];
        let mut checked = Vec::with_capacity(self.fields.len());
        let mut out = Vec::with_capacity(512);
        let mut source = Vec::with_capacity(128);
        for (index, message) in messages.try_iter()?.enumerate() {
            let message = message?;
            let value = message.call_method0(intern!(py, "value"))?;
            let accepted = match value.cast::<PyBytes>() {
                Ok(payload) => {
                    let p = payload.as_bytes();
                    self.check(p, now_us, &mut slots, &mut checked) && self.is_json(&message)?
                }
                Err(_) => false,
            };
            if !accepted {
                for list in [&cleans, &event_ids, &sources] {
                    list.append(py.None())?;
                }
                declined.append(index)?;
                continue;
            }
            let p = value.cast::<PyBytes>()?.as_bytes();
            let topic_obj = message.call_method0(intern!(py, "topic"))?;
            let topic = topic_obj.cast::<PyString>()?.to_str()?;
            let partition: i64 = message.call_method0(intern!(py, "partition"))?.extract()?;
            let offset: i64 = message.call_method0(intern!(py, "offset"))?.extract()?;
            let lineage = Lineage {
                topic,
                partition,
                offset,
                ingested: ingested_at,
            };
            self.encode(p, &checked, &lineage, &mut out);
            let text = |i: usize| match checked[i] {
                Checked::Str(a, b) => PyBytes::new(py, &p[a..b]),
                _ => unreachable!("id and key are string fields"),
            };
            source.clear();
            source.extend_from_slice(topic.as_bytes());
            source.push(b'/');
            encode::decimal(&mut source, partition);
            source.push(b'/');
            encode::decimal(&mut source, offset);
            let clean = PyTuple::new(py, [PyBytes::new(py, &out), text(self.key_field)])?;
            cleans.append(clean)?;
            event_ids.append(text(self.id_field))?;
            sources.append(PyBytes::new(py, &source))?;
        }
        PyTuple::new(py, [cleans, event_ids, sources, declined])
    }
}

#[pymodule]
fn driftline_fastgate(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BatchGate>()?;
    m.add_function(wrap_pyfunction!(resp::resp_set_commands, m)?)?;
    Ok(())
}
