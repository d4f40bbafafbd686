//! Analytics over columnar files: purchases read from a Parquet file of events,
//! folded per customer, and their RFM scores (`relais_domain::rfm`).
//!
//! The file holds one row per event with at least the columns `event_type`
//! (string), `customer_id` (string), `timestamp` (a Parquet timestamp) and
//! `amount_minor` (64-bit integer, minor units; null outside purchases); other
//! columns are never read. A purchase is a row whose `event_type` is the purchase
//! event (`Order Completed` in the Segment e-commerce spec).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, BooleanArray, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, TimeUnit};
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowFilter,
};
use parquet::arrow::ProjectionMask;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use relais_domain::rfm::{self, PurchaseTotals, Rfm, RfmError};

/// The event that counts as a purchase (Segment e-commerce spec).
pub const PURCHASE_EVENT: &str = "Order Completed";
/// Column of the event name.
pub const EVENT_TYPE_COLUMN: &str = "event_type";
/// Column of the customer id.
pub const CUSTOMER_ID_COLUMN: &str = "customer_id";
/// Column of the event's instant.
pub const TIMESTAMP_COLUMN: &str = "timestamp";
/// Column of the purchase amount in minor units.
pub const AMOUNT_COLUMN: &str = "amount_minor";

/// Why a file of events could not be read or scored.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// The file could not be opened.
    #[error("cannot open `{path}`: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    /// The Parquet reader failed (not a Parquet file, corrupt page…).
    #[error("cannot read Parquet file `{path}`: {source}")]
    Parquet { path: PathBuf, source: ParquetError },
    /// A batch could not be decoded.
    #[error("cannot decode `{path}`: {source}")]
    Arrow { path: PathBuf, source: ArrowError },
    /// A needed column is missing.
    #[error(
        "`{path}` has no column `{column}`: events need `event_type`, `customer_id`, `timestamp` and `amount_minor`"
    )]
    MissingColumn { path: PathBuf, column: &'static str },
    /// A column has a type that cannot be read as expected.
    #[error("column `{column}` of `{path}` is {found}, expected {expected}")]
    ColumnType { path: PathBuf, column: &'static str, found: String, expected: &'static str },
    /// A column is compressed with a codec this build does not include.
    #[error("column `{column}` of `{path}` is compressed with {codec}, which relais does not read (only Snappy and uncompressed, to keep the build lean): rewrite the file with Snappy, e.g. DuckDB's `COPY … (FORMAT parquet, COMPRESSION snappy)`")]
    Compression { path: PathBuf, column: String, codec: String },
    /// A purchase without a customer id.
    #[error("`{path}` has a purchase without a customer id: every purchase needs `customer_id`")]
    MissingCustomer { path: PathBuf },
    /// Scoring failed.
    #[error(transparent)]
    Rfm(#[from] RfmError),
}

/// Purchases folded per customer: `totals[i]` belongs to `customers[i]`, in no
/// particular order.
#[derive(Debug, Default)]
pub struct CustomerTotals {
    /// Customer ids, each once.
    pub customers: Vec<Box<str>>,
    /// Their totals.
    pub totals: Vec<PurchaseTotals>,
}

/// RFM read from a file: the customers, their totals and their scores, index by index.
#[derive(Debug)]
pub struct ParquetRfm {
    /// Customer ids and purchase totals.
    pub totals: CustomerTotals,
    /// Scores, `scores[i]` for `totals.customers[i]`.
    pub scores: Vec<Rfm>,
    /// Rows of the file (all events).
    pub events: usize,
}

/// Read the purchases of a Parquet file of events and score them at `now_micros`
/// (microseconds since the Unix epoch), decoding row groups on `threads` threads.
pub fn rfm_from_parquet(path: &Path, now_micros: i64, threads: usize) -> Result<ParquetRfm, AnalyticsError> {
    let (totals, events) = read_purchase_totals(path, PURCHASE_EVENT, threads)?;
    let scores = rfm::score(&totals.customers, &totals.totals, now_micros)?;
    Ok(ParquetRfm { totals, scores, events })
}

/// A fast hash of an id's bytes (FxHash's mixing, 8 bytes at a time, then
/// MurmurHash3's finaliser so the low bits that pick a bucket are well mixed).
/// SipHash's resistance to chosen keys buys nothing on a file the operator reads.
fn hash_id(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ word).wrapping_mul(K);
    }
    let mut tail = 0u64;
    for (i, b) in chunks.remainder().iter().enumerate() {
        tail |= u64::from(*b) << (8 * i);
    }
    h = (h.rotate_left(5) ^ tail).wrapping_mul(K);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The longest id kept inline in a map key; relais's `cus_` ids have 30 bytes.
const INLINE_ID: usize = 31;

/// A customer id as a map key: its hash, computed once per row, and its bytes
/// inline, so that a lookup reads only the table's own memory (no pointer to
/// follow to a string elsewhere, which cost a cache miss per purchase) and
/// growing the table rehashes nothing. Key and totals fill one 64-byte line.
#[derive(Clone, Copy)]
struct InlineId {
    hash: u64,
    len: u8,
    bytes: [u8; INLINE_ID],
}

impl InlineId {
    /// The key of `id`, or `None` when it is too long to be inline.
    #[inline]
    fn new(id: &str) -> Option<Self> {
        let len = id.len();
        if len > INLINE_ID {
            return None;
        }
        let mut bytes = [0u8; INLINE_ID];
        bytes[..len].copy_from_slice(id.as_bytes());
        Some(InlineId { hash: hash_id(id.as_bytes()), len: len as u8, bytes })
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("made from a str")
    }
}

impl PartialEq for InlineId {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        // Fixed-size arrays zero-padded past `len`: one wide comparison.
        self.hash == other.hash && self.len == other.len && self.bytes == other.bytes
    }
}

impl Eq for InlineId {}

impl std::hash::Hash for InlineId {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes the precomputed hash of an [`InlineId`] through.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `InlineId`; anything else still hashes.
        self.0 = hash_id(bytes) ^ self.0.rotate_left(7);
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One thread's purchases folded per customer: ids up to [`INLINE_ID`] bytes
/// inline, longer ones (other systems' ids) in a plain map.
#[derive(Default)]
struct IdMap {
    short: HashMap<InlineId, PurchaseTotals, BuildHasherDefault<PassThrough>>,
    long: HashMap<Box<str>, PurchaseTotals>,
}

impl IdMap {
    fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    /// Fold one purchase in.
    #[inline]
    fn add(&mut self, customer: &str, at_micros: i64, amount: i64) -> Result<(), RfmError> {
        let sum = match InlineId::new(customer) {
            Some(key) => match self.short.entry(key) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    entry.insert(PurchaseTotals::of_one(at_micros, amount));
                    return Ok(());
                }
            },
            None => match self.long.get_mut(customer) {
                Some(sum) => sum,
                None => {
                    self.long.insert(customer.into(), PurchaseTotals::of_one(at_micros, amount));
                    return Ok(());
                }
            },
        };
        sum.add(at_micros, amount).ok_or_else(|| overflow(customer))
    }

    /// Merge another thread's totals in.
    fn merge(&mut self, other: IdMap) -> Result<(), RfmError> {
        for (key, totals) in other.short {
            match self.short.entry(key) {
                Entry::Occupied(entry) => entry.into_mut().merge(&totals).ok_or_else(|| overflow(key.as_str()))?,
                Entry::Vacant(entry) => {
                    entry.insert(totals);
                }
            }
        }
        for (customer, totals) in other.long {
            match self.long.get_mut(&customer) {
                Some(sum) => sum.merge(&totals).ok_or_else(|| overflow(&customer))?,
                None => {
                    self.long.insert(customer, totals);
                }
            }
        }
        Ok(())
    }

    fn into_totals(self) -> CustomerTotals {
        let n = self.len();
        let mut out = CustomerTotals { customers: Vec::with_capacity(n), totals: Vec::with_capacity(n) };
        for (key, totals) in self.short {
            out.customers.push(key.as_str().into());
            out.totals.push(totals);
        }
        for (customer, totals) in self.long {
            out.customers.push(customer);
            out.totals.push(totals);
        }
        out
    }
}

/// Fold the purchases (rows whose event is `purchase_event`) of a Parquet file
/// per customer, decoding row groups on `threads` threads; also gives the file's
/// row count. Only the four event columns are read, and the customer, instant and
/// amount only for purchase rows.
pub fn read_purchase_totals(
    path: &Path,
    purchase_event: &str,
    threads: usize,
) -> Result<(CustomerTotals, usize), AnalyticsError> {
    let parquet_error = |source| AnalyticsError::Parquet { path: path.to_owned(), source };
    let file = File::open(path).map_err(|source| AnalyticsError::Open { path: path.to_owned(), source })?;
    let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(parquet_error)?;
    let columns = EventColumns::find(path, metadata.schema())?;
    // Read the event name as a dictionary (its few values are dictionary-encoded
    // in the file, so only the keys are decoded) and the customer id as string
    // views (no copy of the id bytes out of the page).
    let hinted: Vec<Field> = metadata
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            if i == columns.event_type {
                field
                    .as_ref()
                    .clone()
                    .with_data_type(DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)))
            } else if i == columns.customer_id {
                field.as_ref().clone().with_data_type(DataType::Utf8View)
            } else {
                field.as_ref().clone()
            }
        })
        .collect();
    let options = ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(hinted)));
    let metadata = ArrowReaderMetadata::try_new(metadata.metadata().clone(), options).map_err(parquet_error)?;
    let events = usize::try_from(metadata.metadata().file_metadata().num_rows()).unwrap_or(0);
    let row_groups = metadata.metadata().num_row_groups();
    // Say which codec is missing before decoding, rather than a nested error mid-read.
    for group in metadata.metadata().row_groups() {
        for chunk in group.columns() {
            let read = chunk.column_path().parts().first().is_some_and(|name| {
                [EVENT_TYPE_COLUMN, CUSTOMER_ID_COLUMN, TIMESTAMP_COLUMN, AMOUNT_COLUMN].contains(&name.as_str())
            });
            if read && !matches!(chunk.compression(), Compression::UNCOMPRESSED | Compression::SNAPPY) {
                return Err(AnalyticsError::Compression {
                    path: path.to_owned(),
                    column: chunk.column_path().string(),
                    codec: chunk.compression().to_string(),
                });
            }
        }
    }

    // Threads take row groups from a shared counter, so a slow group does not
    // leave the other threads idle at the end.
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, row_groups.max(1));
    let parts: Vec<Result<IdMap, AnalyticsError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (metadata, next, columns) = (&metadata, &next, &columns);
                scope.spawn(move || -> Result<IdMap, AnalyticsError> {
                    // A handle of its own: cloned handles share one file offset,
                    // which the reader seeks, so threads sharing one would race.
                    let file =
                        File::open(path).map_err(|source| AnalyticsError::Open { path: path.to_owned(), source })?;
                    let mut map = IdMap::default();
                    loop {
                        let group = next.fetch_add(1, Ordering::Relaxed);
                        if group >= row_groups {
                            return Ok(map);
                        }
                        fold_row_group(path, &file, metadata, columns, purchase_event, group, &mut map)?;
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a reader thread panicked")).collect()
    });
    let mut parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
    // Merge into the largest part.
    parts.sort_by_key(|map| std::cmp::Reverse(map.len()));
    let mut merged = parts.drain(..1).next().unwrap_or_default();
    for part in parts {
        merged.merge(part)?;
    }
    let out = merged.into_totals();
    Ok((out, events))
}

fn overflow(customer: &str) -> RfmError {
    RfmError::MonetaryOverflow { customer: customer.to_owned(), max: i64::MAX }
}

/// Where the four event columns are, among the file's top-level fields and its leaves.
struct EventColumns {
    event_type: usize,
    customer_id: usize,
    timestamp: usize,
    amount: usize,
    /// Multiply a timestamp value by this, or divide by `-scale`, to get microseconds.
    timestamp_scale: i64,
}

impl EventColumns {
    fn find(path: &Path, schema: &Schema) -> Result<Self, AnalyticsError> {
        let find = |column: &'static str| {
            schema
                .index_of(column)
                .map_err(|_| AnalyticsError::MissingColumn { path: path.to_owned(), column })
                .map(|i| (i, schema.field(i).data_type()))
        };
        let wrong = |column: &'static str, found: &DataType, expected: &'static str| AnalyticsError::ColumnType {
            path: path.to_owned(),
            column,
            found: found.to_string(),
            expected,
        };
        let (event_type, t) = find(EVENT_TYPE_COLUMN)?;
        if !matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _)) {
            return Err(wrong(EVENT_TYPE_COLUMN, t, "a string"));
        }
        let (customer_id, t) = find(CUSTOMER_ID_COLUMN)?;
        if !matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            return Err(wrong(CUSTOMER_ID_COLUMN, t, "a string"));
        }
        let (timestamp, t) = find(TIMESTAMP_COLUMN)?;
        let timestamp_scale = match t {
            DataType::Timestamp(TimeUnit::Second, _) => 1_000_000,
            DataType::Timestamp(TimeUnit::Millisecond, _) => 1_000,
            DataType::Timestamp(TimeUnit::Microsecond, _) => 1,
            DataType::Timestamp(TimeUnit::Nanosecond, _) => -1_000,
            other => return Err(wrong(TIMESTAMP_COLUMN, other, "a timestamp")),
        };
        let (amount, t) = find(AMOUNT_COLUMN)?;
        if *t != DataType::Int64 {
            return Err(wrong(AMOUNT_COLUMN, t, "a 64-bit integer (minor units)"));
        }
        Ok(EventColumns { event_type, customer_id, timestamp, amount, timestamp_scale })
    }
}

/// Fold the purchases of one row group into `map`.
fn fold_row_group(
    path: &Path,
    file: &File,
    metadata: &ArrowReaderMetadata,
    columns: &EventColumns,
    purchase_event: &str,
    group: usize,
    map: &mut IdMap,
) -> Result<(), AnalyticsError> {
    let parquet_error = |source| AnalyticsError::Parquet { path: path.to_owned(), source };
    let arrow_error = |source| AnalyticsError::Arrow { path: path.to_owned(), source };
    // The reader seeks this thread's own handle (a clone shares its offset).
    let file = file.try_clone().map_err(|source| AnalyticsError::Open { path: path.to_owned(), source })?;
    let schema = metadata.parquet_schema();
    // Masks by top-level field: the four columns are flat, whatever else the file holds.
    let predicate_mask = ProjectionMask::roots(schema, [columns.event_type]);
    let output_mask = ProjectionMask::roots(schema, [columns.customer_id, columns.timestamp, columns.amount]);
    let purchase_event = purchase_event.to_owned();
    // Keep the purchase rows: the other columns are then decoded at those rows only.
    let predicate = ArrowPredicateFn::new(predicate_mask, move |batch: RecordBatch| {
        let names = batch.column(0).as_dictionary::<Int32Type>();
        let values = names.values().as_string::<i32>();
        let wanted: Vec<bool> =
            (0..values.len()).map(|k| values.is_valid(k) && values.value(k) == purchase_event).collect();
        let keys = names.keys();
        let key_values = keys.values();
        let keep: Vec<bool> = match keys.nulls() {
            None => key_values.iter().map(|&k| wanted[k as usize]).collect(),
            Some(nulls) => (0..keys.len()).map(|i| nulls.is_valid(i) && wanted[key_values[i] as usize]).collect(),
        };
        Ok(BooleanArray::from(keep))
    });
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
        .with_row_groups(vec![group])
        .with_projection(output_mask)
        .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
        .with_batch_size(64 * 1024)
        .build()
        .map_err(parquet_error)?;
    let scale = columns.timestamp_scale;
    for batch in reader {
        let batch = batch.map_err(arrow_error)?;
        // Output columns come in file order: customer id, timestamp, amount.
        let customers = batch.column(0).as_string_view();
        let instants = timestamp_values(batch.column(1).as_ref());
        let amounts = batch.column(2).as_primitive::<Int64Type>();
        if customers.null_count() > 0 {
            return Err(AnalyticsError::MissingCustomer { path: path.to_owned() });
        }
        let amount_values = amounts.values();
        let amount_nulls = amounts.nulls();
        for (i, &instant) in instants.iter().enumerate() {
            let customer = customers.value(i);
            let at = if scale > 0 { instant.saturating_mul(scale) } else { instant.div_euclid(-scale) };
            // A purchase without an amount counts as one purchase of 0, as SQL's
            // `count(*)` and `sum(amount_minor)` see it.
            let amount = if amount_nulls.is_some_and(|n| n.is_null(i)) { 0 } else { amount_values[i] };
            map.add(customer, at, amount)?;
        }
    }
    Ok(())
}

/// The raw values of a timestamp column, whatever its unit (all are `i64`).
fn timestamp_values(column: &dyn Array) -> &[i64] {
    use arrow_array::types::{TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType};
    match column.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => column.as_primitive::<TimestampSecondType>().values(),
        DataType::Timestamp(TimeUnit::Millisecond, _) => column.as_primitive::<TimestampMillisecondType>().values(),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => column.as_primitive::<TimestampNanosecondType>().values(),
        _ => column.as_primitive::<TimestampMicrosecondType>().values(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{write_synthetic_events, SYNTHETIC_NOW_MICROS};
    use chrono::{TimeZone, Utc};
    use relais_domain::rfm::Purchase;

    /// Every row of the file, decoded plainly (no projection, no filter).
    fn all_rows(path: &Path) -> Vec<(String, String, i64, Option<i64>)> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("file"))
            .expect("parquet")
            .build()
            .expect("reader");
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.expect("batch");
            let names = batch.column(0).as_string::<i32>();
            let customers = batch.column(1).as_string::<i32>();
            let instants = batch.column(2).as_primitive::<TimestampMicrosecondType>();
            let amounts = batch.column(3).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                rows.push((
                    names.value(i).to_owned(),
                    customers.value(i).to_owned(),
                    instants.value(i),
                    amounts.is_valid(i).then(|| amounts.value(i)),
                ));
            }
        }
        rows
    }

    #[test]
    fn rfm_read_from_parquet_equals_the_domain_rfm_of_the_same_purchases() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.parquet");
        // More than one row group (122,880 rows each), so threads share the work.
        write_synthetic_events(&path, 300_000, 2_000, 7).expect("generate");
        let rows = all_rows(&path);
        assert_eq!(rows.len(), 300_000);
        let purchases: Vec<Purchase<'_>> = rows
            .iter()
            .filter(|row| row.0 == PURCHASE_EVENT)
            .map(|row| Purchase {
                customer: &row.1,
                at: Utc.timestamp_micros(row.2).single().expect("instant"),
                amount: row.3.expect("purchases have amounts"),
            })
            .collect();
        let share = purchases.len() as f64 / rows.len() as f64;
        assert!((0.07..0.09).contains(&share), "{share} of events are purchases");
        let now = Utc.timestamp_micros(SYNTHETIC_NOW_MICROS).single().expect("now");
        let expected = relais_domain::rfm::rfm(purchases, now).expect("domain rfm");

        for threads in [1, 3] {
            let read = rfm_from_parquet(&path, SYNTHETIC_NOW_MICROS, threads).expect("read");
            assert_eq!(read.events, 300_000);
            let mut got: Vec<(String, Rfm)> =
                read.totals.customers.iter().map(|c| c.to_string()).zip(read.scores.iter().copied()).collect();
            got.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let want: Vec<(String, Rfm)> = expected.iter().map(|c| (c.customer.clone(), c.rfm)).collect();
            assert_eq!(got, want, "{threads} threads");
        }
    }

    #[test]
    fn long_and_short_ids_fold_alike_across_row_groups_and_threads() {
        // Ids longer than the inline key take the other map; row groups of two
        // rows make each customer's purchases land on several threads.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.parquet");
        let long = "customer-from-another-system-0000000001";
        let rows: [(&str, &str, i64, Option<i64>); 9] = [
            (PURCHASE_EVENT, long, 5_000_000, Some(300)),
            ("Page Viewed", "cus_a", 6_000_000, None),
            (PURCHASE_EVENT, "cus_a", 7_000_000, Some(100)),
            (PURCHASE_EVENT, long, 8_000_000, Some(50)),
            (PURCHASE_EVENT, "cus_b", 9_000_000, None),
            (PURCHASE_EVENT, "cus_a", 1_000_000, Some(25)),
            ("Page Viewed", "cus_c", 9_500_000, None),
            (PURCHASE_EVENT, "cus_b", 2_000_000, Some(7)),
            (PURCHASE_EVENT, "x", 3_000_000, Some(1)),
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new(EVENT_TYPE_COLUMN, DataType::Utf8, false),
            Field::new(CUSTOMER_ID_COLUMN, DataType::Utf8, false),
            Field::new(TIMESTAMP_COLUMN, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new(AMOUNT_COLUMN, DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow_array::StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(arrow_array::StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(
                    arrow_array::TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                        .with_timezone("UTC"),
                ),
                Arc::new(arrow_array::Int64Array::from_iter(rows.iter().map(|r| r.3))),
            ],
        )
        .expect("batch");
        let properties =
            parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(2)).build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(File::create(&path).expect("file"), schema, Some(properties))
                .expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");

        let now = 10_000_000;
        let purchases = rows.iter().filter(|r| r.0 == PURCHASE_EVENT).map(|r| Purchase {
            customer: r.1,
            at: Utc.timestamp_micros(r.2).single().expect("instant"),
            amount: r.3.unwrap_or(0),
        });
        let expected =
            relais_domain::rfm::rfm(purchases, Utc.timestamp_micros(now).single().expect("now")).expect("domain rfm");
        assert_eq!(expected.len(), 4, "cus_c never bought");
        for threads in [1, 2, 4] {
            let read = rfm_from_parquet(&path, now, threads).expect("read");
            let mut got: Vec<(String, Rfm)> =
                read.totals.customers.iter().map(|c| c.to_string()).zip(read.scores.iter().copied()).collect();
            got.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let want: Vec<(String, Rfm)> = expected.iter().map(|c| (c.customer.clone(), c.rfm)).collect();
            assert_eq!(got, want, "{threads} threads");
        }
        // The long id: two purchases, 350 in all, the last 2 s before now.
        let long_rfm = expected.iter().find(|c| c.customer == long).expect("long id scored").rfm;
        assert_eq!((long_rfm.frequency, long_rfm.monetary, long_rfm.recency_seconds), (2, 350, 2));
    }

    #[test]
    fn a_file_without_an_amount_column_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new(EVENT_TYPE_COLUMN, DataType::Utf8, false),
            Field::new(CUSTOMER_ID_COLUMN, DataType::Utf8, false),
            Field::new(TIMESTAMP_COLUMN, DataType::Timestamp(TimeUnit::Microsecond, None), false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow_array::StringArray::from(vec![PURCHASE_EVENT])),
                Arc::new(arrow_array::StringArray::from(vec!["cus_a"])),
                Arc::new(arrow_array::TimestampMicrosecondArray::from(vec![0])),
            ],
        )
        .expect("batch");
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(File::create(&path).expect("file"), schema, None).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        let error = rfm_from_parquet(&path, 0, 1).expect_err("no amount column");
        assert!(matches!(error, AnalyticsError::MissingColumn { column: AMOUNT_COLUMN, .. }), "{error}");
        assert!(error.to_string().contains("amount_minor"), "{error}");
    }
}
