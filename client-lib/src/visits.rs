//! The visit handle.

use fieldsync_core::model::{
    self, Document, Edit, NeedInput, NewVisit, TaskInput, Visit, VisitEdit, VisitField,
    VisitStatus, new_item_id,
};
use fieldsync_core::{CustomerId, DocKind, Millis, VisitId};

use crate::rows::{self, TaskRow, VisitFilter, VisitRow};
use crate::{Client, ClientError, typed_document};

/// Visits of the replica; get one with [`Client::visits`].
#[derive(Clone, Copy, Debug)]
pub struct Visits<'c> {
    client: &'c Client,
}

impl<'c> Visits<'c> {
    pub(crate) fn new(client: &'c Client) -> Self {
        Self { client }
    }

    /// Logs (or plans) a visit to `new.customer_id` and returns its id. The visit takes the
    /// customer's organisation and scope; the customer must be in the replica (archived
    /// customers are allowed: activity is never lost).
    pub fn create(&self, new: NewVisit) -> Result<VisitId, ClientError> {
        self.client
            .create_for_customer(new.customer_id, |doc, id, org, scope, ctx| {
                model::create_visit(doc, id, org, scope, &new, ctx)
            })
            .map(VisitId)
    }

    /// Logs a visit together with its details (contacts met, needs, tasks, satisfaction, …)
    /// as one change: all of it is written, or nothing (a retried save cannot leave a bare
    /// visit behind).
    pub fn create_with(&self, new: NewVisit, edits: &[VisitEdit]) -> Result<VisitId, ClientError> {
        self.client
            .create_for_customer(new.customer_id, |doc, id, org, scope, ctx| {
                model::create_visit(doc, id, org, scope, &new, ctx)?;
                edits
                    .iter()
                    .try_for_each(|e| model::apply_edit(doc, &Edit::Visit(e.clone()), ctx))
            })
            .map(VisitId)
    }

    /// Reads a visit document.
    pub fn get(&self, id: VisitId) -> Result<Visit, ClientError> {
        self.client
            .with_store(|store| match typed_document(store, id, DocKind::Visit)? {
                Document::Visit(v) => Ok(v),
                other => Err(ClientError::WrongKind {
                    id: id.into(),
                    expected: DocKind::Visit,
                    actual: other.header().kind,
                }),
            })
    }

    /// Applies one edit to a visit.
    pub fn edit(&self, id: VisitId, edit: VisitEdit) -> Result<(), ClientError> {
        self.client.apply_edit(id, Edit::Visit(edit))
    }

    /// Applies several edits to a visit as one change: all of them or none.
    pub fn edit_all(&self, id: VisitId, edits: &[VisitEdit]) -> Result<(), ClientError> {
        self.client.edit_doc(id, |doc, ctx| {
            edits
                .iter()
                .try_for_each(|e| model::apply_edit(doc, &Edit::Visit(e.clone()), ctx))
        })
    }

    /// Archives (soft-deletes) a visit.
    pub fn archive(&self, id: VisitId) -> Result<(), ClientError> {
        self.edit(id, VisitEdit::Archive)
    }

    /// Visits, newest first (by visit time, or creation time when unset), filtered and paged.
    pub fn list(&self, filter: &VisitFilter) -> Result<Vec<VisitRow>, ClientError> {
        self.client.read(|c| rows::list_visits(c, filter))
    }

    /// A customer's non-archived visits, newest first.
    pub fn for_customer(&self, customer: CustomerId) -> Result<Vec<VisitRow>, ClientError> {
        self.list(&VisitFilter::new().customer(customer))
    }

    /// Open (not completed) tasks assigned to `assignee`, and unassigned ones of visits they
    /// logged, soonest due first, undated last.
    /// Tasks of archived visits are left out.
    pub fn open_tasks(&self, assignee: &str) -> Result<Vec<TaskRow>, ClientError> {
        self.client
            .read(|c| rows::open_tasks(c, rows::TasksOf::Assignee(assignee)))
    }

    /// Open tasks of the live visits to `customer`, whoever they are assigned to, soonest
    /// due first, undated last.
    pub fn open_tasks_of(&self, customer: CustomerId) -> Result<Vec<TaskRow>, ClientError> {
        self.client
            .read(|c| rows::open_tasks(c, rows::TasksOf::Customer(customer)))
    }

    // -----------------------------------------------------------------------------------------
    // Convenience edits.

    /// Sets a text field (kind, location, notes).
    pub fn set(
        &self,
        id: VisitId,
        field: VisitField,
        value: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.edit(id, VisitEdit::Set(field, value.into()))
    }

    /// Sets the planned or actual time of the visit.
    pub fn set_at(&self, id: VisitId, at: Millis) -> Result<(), ClientError> {
        self.edit(id, VisitEdit::SetAt(at))
    }

    /// Marks a status. Merges keep the highest: done beats cancelled beats planned.
    pub fn mark_status(&self, id: VisitId, status: VisitStatus) -> Result<(), ClientError> {
        self.edit(id, VisitEdit::MarkStatus(status))
    }

    /// Marks the visit done.
    pub fn mark_done(&self, id: VisitId) -> Result<(), ClientError> {
        self.mark_status(id, VisitStatus::Done)
    }

    /// Records the customer's satisfaction, 1 to 5.
    pub fn set_satisfaction(&self, id: VisitId, rating: i64) -> Result<(), ClientError> {
        self.edit(id, VisitEdit::SetSatisfaction(rating))
    }

    /// Records that a contact of the customer was met (by contact item id).
    pub fn add_contact_met(&self, id: VisitId, contact_id: &str) -> Result<(), ClientError> {
        self.edit(id, VisitEdit::AddContactMet(contact_id.into()))
    }

    /// Records a need and returns its new item id.
    pub fn add_need(&self, id: VisitId, need: NeedInput) -> Result<String, ClientError> {
        let item = new_item_id();
        self.edit(id, VisitEdit::AddNeed(item.clone(), need))?;
        Ok(item)
    }

    /// Adds a next-step task (a title is required) and returns its new item id.
    pub fn add_task(&self, id: VisitId, task: TaskInput) -> Result<String, ClientError> {
        let item = new_item_id();
        self.edit(id, VisitEdit::AddTask(item.clone(), task))?;
        Ok(item)
    }

    /// Changes a task (`None` fields stay as they are).
    pub fn update_task(
        &self,
        id: VisitId,
        task_id: &str,
        changes: TaskInput,
    ) -> Result<(), ClientError> {
        self.edit(id, VisitEdit::UpdateTask(task_id.into(), changes))
    }

    /// Completes a task; completion is permanent and the first completion time is kept.
    pub fn complete_task(&self, id: VisitId, task_id: &str) -> Result<(), ClientError> {
        self.edit(id, VisitEdit::CompleteTask(task_id.into()))
    }

    /// Adds a comment and returns its new item id.
    pub fn add_comment(&self, id: VisitId, text: impl Into<String>) -> Result<String, ClientError> {
        let item = new_item_id();
        self.edit(id, VisitEdit::AddComment(item.clone(), text.into()))?;
        Ok(item)
    }
}
