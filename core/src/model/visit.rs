//! The visit document: a sales call, return visit or service visit at a customer.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ROOT};
use serde::{Deserialize, Serialize};

use super::{
    EditCtx, Header, ModelError, Note, add_note, add_to_set, am, read_notes, read_set, set_archived,
};
use crate::ids::{CustomerId, Millis};

/// Visit status. Merges take the highest: done beats cancelled beats planned, so a visit that
/// happened never disappears because a manager cancelled it concurrently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitStatus {
    /// Planned, not yet done.
    Planned,
    /// Cancelled.
    Cancelled,
    /// Done.
    Done,
}

impl VisitStatus {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Cancelled => "cancelled",
            Self::Done => "done",
        }
    }

    /// Parses [`VisitStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "planned" => Some(Self::Planned),
            "cancelled" => Some(Self::Cancelled),
            "done" => Some(Self::Done),
            _ => None,
        }
    }
}

/// Plain last-writer-wins text fields of a visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitField {
    /// Kind: sales_call, return_visit, quote_follow_up, service_repair, complaint_intake, care, other.
    Kind,
    /// Where it took place.
    Location,
    /// Minutes and notes (single author).
    Notes,
}

impl VisitField {
    /// The document key.
    pub fn key(self) -> &'static str {
        match self {
            Self::Kind => "visit_kind",
            Self::Location => "location",
            Self::Notes => "notes",
        }
    }
}

/// What a new visit starts with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewVisit {
    /// The customer visited.
    pub customer_id: CustomerId,
    /// Kind (defaults to `sales_call`).
    pub kind: Option<String>,
    /// Notes.
    pub notes: Option<String>,
    /// Initial status (planned or done).
    pub status: VisitStatus,
    /// Planned or actual time of the visit.
    pub at: Option<Millis>,
    /// Location.
    pub location: Option<String>,
}

/// A need captured at a visit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedInput {
    /// Product line.
    pub product_line: String,
    /// Quantity.
    pub quantity: Option<i64>,
    /// Estimated amount in minor units.
    pub amount_minor: Option<i64>,
    /// Time frame, free text.
    pub timeframe: Option<String>,
}

/// A captured need.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    /// Stable id.
    pub id: String,
    /// Product line.
    pub product_line: String,
    /// Quantity.
    pub quantity: Option<i64>,
    /// Amount.
    pub amount_minor: Option<i64>,
    /// Time frame.
    pub timeframe: Option<String>,
}

/// Fields of a next-step task; on update, `None` leaves a field unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInput {
    /// Title (required when adding).
    pub title: Option<String>,
    /// Due time.
    pub due: Option<Millis>,
    /// Assignee.
    pub assignee: Option<String>,
}

/// A next-step task. Done is monotone: once completed it stays completed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Stable id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Due.
    pub due: Option<Millis>,
    /// Assignee.
    pub assignee: Option<String>,
    /// Completion time, if done.
    pub done_at: Option<Millis>,
    /// Who completed it.
    pub done_by: Option<String>,
}

/// A visit as read from its document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visit {
    /// Header.
    #[serde(flatten)]
    pub header: Header,
    /// The customer visited.
    pub customer_id: CustomerId,
    /// Visit kind.
    pub visit_kind: String,
    /// Status (highest mark).
    pub status: VisitStatus,
    /// When the visit is planned or happened.
    pub at: Option<Millis>,
    /// Location.
    pub location: Option<String>,
    /// Notes.
    pub notes: String,
    /// Satisfaction 1–5.
    pub satisfaction: Option<i64>,
    /// Contacts met (ids of customer contacts).
    pub contacts_met: Vec<String>,
    /// Needs captured.
    pub needs: Vec<Need>,
    /// Next-step tasks.
    pub tasks: Vec<Task>,
    /// Manager comments (add-only).
    pub comments: Vec<Note>,
}

/// An edit to a visit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitEdit {
    /// Set a text field.
    Set(VisitField, String),
    /// Set the visit time.
    SetAt(Millis),
    /// Set the satisfaction rating (1–5).
    SetSatisfaction(i64),
    /// Mark a status (merges take the highest).
    MarkStatus(VisitStatus),
    /// Record a contact met.
    AddContactMet(String),
    /// Add a need under a fresh id.
    AddNeed(String, NeedInput),
    /// Add a task under a fresh id.
    AddTask(String, TaskInput),
    /// Change a task.
    UpdateTask(String, TaskInput),
    /// Complete a task (monotone).
    CompleteTask(String),
    /// Add a comment under a fresh id.
    AddComment(String, String),
    /// Archive (soft delete).
    Archive,
}

pub(super) fn create(
    root: &mut am::MapInit,
    new: &NewVisit,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    let kind = new.kind.as_deref().unwrap_or("sales_call");
    super::authority::check_visit_kind(kind)?;
    root.str("customer_id", &new.customer_id.to_string())
        .str("visit_kind", kind)
        .str("notes", new.notes.as_deref().unwrap_or(""))
        .opt_int("at", new.at)
        .opt_str("location", new.location.as_deref())
        .empty_maps(&["contacts_met", "needs", "tasks", "comments"]);
    let mut marks = am::MapInit::default();
    marks.int(VisitStatus::Planned.as_str(), ctx.now);
    marks.int(new.status.as_str(), ctx.now);
    root.map("status_marks", marks);
    Ok(())
}

fn mark_status(doc: &mut AutoCommit, s: VisitStatus, ctx: &EditCtx) -> Result<(), ModelError> {
    let marks = am::req_map(doc, &ROOT, "status_marks")?;
    if am::scalar(doc, &marks, s.as_str()).is_none() {
        doc.put(&marks, s.as_str(), ctx.now)?;
    }
    Ok(())
}

fn task(doc: &AutoCommit, id: &str) -> Result<ObjId, ModelError> {
    let tasks = am::req_map(doc, &ROOT, "tasks")?;
    am::get_map(doc, &tasks, id).ok_or_else(|| ModelError::NoSuchItem {
        what: "task",
        id: id.to_string(),
    })
}

fn write_task(doc: &mut AutoCommit, t: &ObjId, input: &TaskInput) -> Result<(), ModelError> {
    am::put_opt_str(doc, t, "title", input.title.as_deref())?;
    am::put_opt_i64(doc, t, "due", input.due)?;
    am::put_opt_str(doc, t, "assignee", input.assignee.as_deref())
}

pub(super) fn apply(
    doc: &mut AutoCommit,
    edit: &VisitEdit,
    ctx: &EditCtx,
) -> Result<(), ModelError> {
    match edit {
        VisitEdit::Set(f, v) => {
            if *f == VisitField::Kind {
                super::authority::check_visit_kind(v)?;
            }
            doc.put(ROOT, f.key(), v.as_str())?;
        }
        VisitEdit::SetAt(t) => {
            doc.put(ROOT, "at", *t)?;
        }
        VisitEdit::SetSatisfaction(s) => {
            if !(1..=5).contains(s) {
                return Err(ModelError::Invalid("satisfaction is 1 to 5".into()));
            }
            doc.put(ROOT, "satisfaction", *s)?;
        }
        VisitEdit::MarkStatus(s) => mark_status(doc, *s, ctx)?,
        VisitEdit::AddContactMet(c) => add_to_set(doc, "contacts_met", c)?,
        VisitEdit::AddNeed(id, n) => {
            if n.product_line.trim().is_empty() {
                return Err(ModelError::Invalid("a need names a product line".into()));
            }
            let needs = am::req_map(doc, &ROOT, "needs")?;
            if id.is_empty() || am::get_map(doc, &needs, id).is_some() {
                return Err(ModelError::Invalid(format!(
                    "need id `{id}` is empty or used"
                )));
            }
            let m = am::new_map(doc, &needs, id)?;
            doc.put(&m, "product_line", n.product_line.as_str())?;
            am::put_opt_i64(doc, &m, "quantity", n.quantity)?;
            am::put_opt_i64(doc, &m, "amount_minor", n.amount_minor)?;
            am::put_opt_str(doc, &m, "timeframe", n.timeframe.as_deref())?;
        }
        VisitEdit::AddTask(id, input) => {
            if input.title.as_deref().is_none_or(|t| t.trim().is_empty()) {
                return Err(ModelError::Invalid("a task needs a title".into()));
            }
            let tasks = am::req_map(doc, &ROOT, "tasks")?;
            if id.is_empty() || am::get_map(doc, &tasks, id).is_some() {
                return Err(ModelError::Invalid(format!(
                    "task id `{id}` is empty or used"
                )));
            }
            let t = am::new_map(doc, &tasks, id)?;
            write_task(doc, &t, input)?;
        }
        VisitEdit::UpdateTask(id, input) => {
            let t = task(doc, id)?;
            write_task(doc, &t, input)?;
        }
        VisitEdit::CompleteTask(id) => {
            let t = task(doc, id)?;
            if am::get_i64(doc, &t, "done_at").is_none() {
                doc.put(&t, "done_at", ctx.now)?;
                doc.put(&t, "done_by", ctx.author.as_str())?;
            }
        }
        VisitEdit::AddComment(id, text) => add_note(doc, "comments", id, text, ctx)?,
        VisitEdit::Archive => set_archived(doc, true)?,
    }
    Ok(())
}

/// The effective status: the highest mark present.
fn status_of(root: &am::HMap) -> VisitStatus {
    read_set(root, "status_marks")
        .iter()
        .filter_map(|s| VisitStatus::parse(s))
        .max()
        .unwrap_or(VisitStatus::Planned)
}

pub(super) fn read(root: &am::HMap, header: Header) -> Result<Visit, ModelError> {
    let customer_id = am::hget_str(root, "customer_id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ModelError::Malformed("visit without customer".into()))?;
    let coll = |k: &str| {
        am::hget_map(root, k)
            .map(|m| am::hitems(m))
            .unwrap_or_default()
    };
    Ok(Visit {
        customer_id,
        visit_kind: am::hget_str(root, "visit_kind").unwrap_or_else(|| "other".into()),
        status: status_of(root),
        at: am::hget_i64(root, "at"),
        location: am::hget_str(root, "location"),
        notes: am::hget_str(root, "notes").unwrap_or_default(),
        satisfaction: am::hget_i64(root, "satisfaction"),
        contacts_met: read_set(root, "contacts_met"),
        needs: coll("needs")
            .into_iter()
            .map(|(id, n)| Need {
                product_line: am::hget_str(n, "product_line").unwrap_or_default(),
                quantity: am::hget_i64(n, "quantity"),
                amount_minor: am::hget_i64(n, "amount_minor"),
                timeframe: am::hget_str(n, "timeframe"),
                id,
            })
            .collect(),
        tasks: coll("tasks")
            .into_iter()
            .map(|(id, t)| Task {
                title: am::hget_str(t, "title").unwrap_or_default(),
                due: am::hget_i64(t, "due"),
                assignee: am::hget_str(t, "assignee"),
                done_at: am::hget_i64(t, "done_at"),
                done_by: am::hget_str(t, "done_by"),
                id,
            })
            .collect(),
        comments: read_notes(root, "comments"),
        header,
    })
}
