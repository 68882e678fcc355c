//! Names of AMQP 0-9-1 methods, looked up by class and method id.
//!
//! Errors and logs name the frame a peer sent. They must never format the frame itself: a
//! Connection.StartOk holds the SASL response, which holds the password. Ids are all a name needs.

use amq_protocol::protocol::AMQPClass;

/// `Class.Method` for a parsed method, e.g. `Connection.StartOk`.
pub fn method_name(class: &AMQPClass) -> String {
    name_of(class.get_amqp_class_id(), class.get_amqp_method_id())
}

/// `Class.Method` for a class and method id; ids that 0-9-1 does not define are shown as numbers.
pub fn name_of(class_id: u16, method_id: u16) -> String {
    match (class_name(class_id), method_of(class_id, method_id)) {
        (Some(c), Some(m)) => format!("{c}.{m}"),
        (Some(c), None) => format!("{c}.{method_id}"),
        _ => format!("{class_id}.{method_id}"),
    }
}

fn class_name(class_id: u16) -> Option<&'static str> {
    Some(match class_id {
        10 => "Connection",
        20 => "Channel",
        30 => "Access",
        40 => "Exchange",
        50 => "Queue",
        60 => "Basic",
        85 => "Confirm",
        90 => "Tx",
        _ => return None,
    })
}

fn method_of(class_id: u16, method_id: u16) -> Option<&'static str> {
    Some(match (class_id, method_id) {
        (10, 10) => "Start",
        (10, 11) => "StartOk",
        (10, 20) => "Secure",
        (10, 21) => "SecureOk",
        (10, 30) => "Tune",
        (10, 31) => "TuneOk",
        (10, 40) => "Open",
        (10, 41) => "OpenOk",
        (10, 50) => "Close",
        (10, 51) => "CloseOk",
        (10, 60) => "Blocked",
        (10, 61) => "Unblocked",
        (10, 70) => "UpdateSecret",
        (10, 71) => "UpdateSecretOk",
        (20, 10) => "Open",
        (20, 11) => "OpenOk",
        (20, 20) => "Flow",
        (20, 21) => "FlowOk",
        (20, 40) => "Close",
        (20, 41) => "CloseOk",
        (30, 10) => "Request",
        (30, 11) => "RequestOk",
        (40, 10) => "Declare",
        (40, 11) => "DeclareOk",
        (40, 20) => "Delete",
        (40, 21) => "DeleteOk",
        (40, 30) => "Bind",
        (40, 31) => "BindOk",
        (40, 40) => "Unbind",
        (40, 51) => "UnbindOk",
        (50, 10) => "Declare",
        (50, 11) => "DeclareOk",
        (50, 20) => "Bind",
        (50, 21) => "BindOk",
        (50, 30) => "Purge",
        (50, 31) => "PurgeOk",
        (50, 40) => "Delete",
        (50, 41) => "DeleteOk",
        (50, 50) => "Unbind",
        (50, 51) => "UnbindOk",
        (60, 10) => "Qos",
        (60, 11) => "QosOk",
        (60, 20) => "Consume",
        (60, 21) => "ConsumeOk",
        (60, 30) => "Cancel",
        (60, 31) => "CancelOk",
        (60, 40) => "Publish",
        (60, 50) => "Return",
        (60, 60) => "Deliver",
        (60, 70) => "Get",
        (60, 71) => "GetOk",
        (60, 72) => "GetEmpty",
        (60, 80) => "Ack",
        (60, 90) => "Reject",
        (60, 100) => "RecoverAsync",
        (60, 110) => "Recover",
        (60, 111) => "RecoverOk",
        (60, 120) => "Nack",
        (85, 10) => "Select",
        (85, 11) => "SelectOk",
        (90, 10) => "Select",
        (90, 11) => "SelectOk",
        (90, 20) => "Commit",
        (90, 21) => "CommitOk",
        (90, 30) => "Rollback",
        (90, 31) => "RollbackOk",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx};

    #[test]
    fn names_come_from_the_ids_amq_protocol_assigns() {
        let cases = [
            (
                AMQPClass::Connection(connection::AMQPMethod::Start(Default::default())),
                "Connection.Start",
            ),
            (
                AMQPClass::Connection(connection::AMQPMethod::StartOk(Default::default())),
                "Connection.StartOk",
            ),
            (
                AMQPClass::Connection(connection::AMQPMethod::Close(Default::default())),
                "Connection.Close",
            ),
            (
                AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(Default::default())),
                "Connection.UpdateSecret",
            ),
            (
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(Default::default())),
                "Channel.CloseOk",
            ),
            (
                AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(Default::default())),
                "Exchange.UnbindOk",
            ),
            (
                AMQPClass::Queue(queue::AMQPMethod::Unbind(Default::default())),
                "Queue.Unbind",
            ),
            (
                AMQPClass::Basic(basic::AMQPMethod::Publish(Default::default())),
                "Basic.Publish",
            ),
            (
                AMQPClass::Basic(basic::AMQPMethod::Nack(Default::default())),
                "Basic.Nack",
            ),
            (
                AMQPClass::Confirm(confirm::AMQPMethod::Select(Default::default())),
                "Confirm.Select",
            ),
            (
                AMQPClass::Tx(tx::AMQPMethod::RollbackOk(Default::default())),
                "Tx.RollbackOk",
            ),
        ];
        for (class, name) in cases {
            assert_eq!(method_name(&class), name);
        }
    }

    #[test]
    fn unknown_ids_are_numbers() {
        assert_eq!(name_of(10, 99), "Connection.99");
        assert_eq!(name_of(70, 1), "70.1");
    }
}
