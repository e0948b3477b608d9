# frozen_string_literal: true

require "digest"

# ActiveJob classes get the limits under the names ActiveJob users know: Solid Queue's
# limits_concurrency and activejob-uniqueness' unique, written as rustq's payload fields.
RSpec.describe "ActiveJob limits_concurrency and unique" do
  def active_job(name, &block)
    stub_const(name, Class.new(ActiveJob::Base) {
      self.queue_adapter = :rustq
      def perform(*) = nil
      class_eval(&block)
    })
  end

  it "limits_concurrency keys by group and the key lambda's value, as Solid Queue does" do
    active_job("ContactJob") { limits_concurrency to: 2, key: ->(account, *) { account }, duration: 300 }
    active_job("OtherContactJob") { limits_concurrency to: 2, key: ->(account, *) { account }, group: "contacts" }
    ContactJob.perform_later("acme", 1)
    OtherContactJob.perform_later("acme", 2)
    expect(queue_payloads.map { |p| p["concurrency"] }).to eq([{"key" => "ContactJob/acme", "limit" => 2}, {"key" => "contacts/acme", "limit" => 2}])
  end

  it "unique maps activejob-uniqueness' strategies, on_conflict says what a duplicate does" do
    active_job("ImportJob") { unique :until_executed, lock_ttl: 3600, on_conflict: :log }
    first = ImportJob.perform_later("file.csv")
    expect(first.successfully_enqueued?).to be(true)
    # ActiveJob 7.1+ answers false for a job not enqueued; 6.1 the job, not enqueued.
    second = ImportJob.perform_later("file.csv")
    expect(second == false || !second.successfully_enqueued?).to be(true)
    expect(second.provider_job_id).to be_nil if second
    expect(queue_payloads.size).to eq(1)
    expect(queue_payloads.first).to include("unique_for" => 3600.0, "unique_until" => "success", "unique_args" => ["file.csv"])

    active_job("StrictImportJob") { unique :until_executing }
    StrictImportJob.perform_later(1)
    expect { StrictImportJob.perform_later(1) }.to raise_error(Rustq::NotUnique, /StrictImportJob not enqueued/)
    expect(queue_payloads.last).to include("unique_until" => "start", "unique_for" => 86_400.0)

    active_job("ExpiringJob") { unique :until_expired, lock_ttl: 60 }
    ExpiringJob.perform_later
    expect(queue_payloads.last["unique_until"]).to eq("expired")

    active_job("OneAtATimeJob") { unique :while_executing }
    OneAtATimeJob.perform_later(7)
    expect(queue_payloads.last["concurrency"]).to include("limit" => 1, "key" => a_string_starting_with("unique:"))
    expect(queue_payloads.last).not_to have_key("unique_for")
  end

  it "two ActiveJob classes with the same arguments have their own locks" do
    active_job("AJob") { unique :until_executed }
    active_job("BJob") { unique :until_executed }
    expect(AJob.perform_later(1)).to be_successfully_enqueued
    expect(BJob.perform_later(1)).to be_successfully_enqueued
  end

  it "refuses an unknown strategy or on_conflict, and pushes limited jobs of perform_all_later one by one" do
    expect { active_job("BadJob") { unique :forever } }.to raise_error(ArgumentError, /unique strategy must be one of/)
    expect { active_job("BadJob2") { unique :until_executed, on_conflict: :ignore } }.to raise_error(ArgumentError, /on_conflict must be/)

    active_job("BulkJob") { limits_concurrency to: 1, key: ->(n) { "n#{n % 2}" } }
    jobs = [BulkJob.new(1), BulkJob.new(2), BulkJob.new(3)]
    expect(ActiveJob::QueueAdapters::RustqAdapter.new.enqueue_all(jobs)).to eq(3)
    expect(queue_payloads.map { |p| p["concurrency"]["key"] }).to eq(%w[BulkJob/n1 BulkJob/n0 BulkJob/n1])
  end
end
